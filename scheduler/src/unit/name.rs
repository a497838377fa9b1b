//! Unit names: `prefix.suffix`, templates `prefix@.suffix` and instances `prefix@instance.suffix`.

/// Unit types systemd knows; fleet refuses names with any other suffix.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "snapshot",
    "slice",
    "scope",
];
/// systemd's limit on unit name length.
const MAX_NAME_LENGTH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitNameError {
    #[error("invalid unit name {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

/// A validated unit name split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName {
    full: String,
    prefix: String,
    instance: Option<String>,
    suffix: String,
}

impl UnitName {
    pub fn parse(name: &str) -> Result<Self, UnitNameError> {
        let invalid = |reason: &str| UnitNameError::Invalid {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if name.is_empty() || name.len() > MAX_NAME_LENGTH {
            return Err(invalid("length must be 1 to 256 characters"));
        }
        if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(invalid(&format!("character {bad:?} is not allowed")));
        }
        let Some((stem, suffix)) = name.rsplit_once('.') else {
            return Err(invalid("missing a unit type suffix such as .service"));
        };
        if !UNIT_TYPES.contains(&suffix) {
            return Err(invalid(&format!("unknown unit type .{suffix}")));
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((prefix, instance)) if !instance.contains('@') => {
                (prefix, Some(instance.to_string()))
            }
            Some(_) => return Err(invalid("more than one '@'")),
            None => (stem, None),
        };
        if prefix.is_empty() {
            return Err(invalid("empty name before the suffix or '@'"));
        }
        Ok(Self {
            full: name.to_string(),
            prefix: prefix.to_string(),
            instance,
            suffix: suffix.to_string(),
        })
    }

    /// The full name, e.g. `foo@1.service` (systemd's `%n`).
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The name without its type suffix, e.g. `foo@1` (fleet's `%N`).
    pub fn stem(&self) -> &str {
        &self.full[..self.full.len() - self.suffix.len() - 1]
    }

    /// The part before `@` (or the whole stem), e.g. `foo` (`%p`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The instance, e.g. `1` for `foo@1.service` (`%i`); empty for non-instances.
    pub fn instance(&self) -> &str {
        self.instance.as_deref().unwrap_or("")
    }

    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// `foo@.service` itself.
    pub fn is_template(&self) -> bool {
        self.instance.as_deref() == Some("")
    }

    /// `foo@1.service`.
    pub fn is_instance(&self) -> bool {
        self.instance.as_deref().is_some_and(|i| !i.is_empty())
    }

    /// The template an instance is made from: `foo@.service` for `foo@1.service`.
    pub fn template(&self) -> Option<String> {
        self.is_instance()
            .then(|| format!("{}@.{}", self.prefix, self.suffix))
    }

    /// Replaces fleet's specifiers `%n %N %p %i` (and `%%`) in `text`.
    pub fn expand_specifiers(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push_str(&self.full),
                Some('N') => out.push_str(self.stem()),
                Some('p') | Some('P') => out.push_str(&self.prefix),
                Some('i') | Some('I') => out.push_str(self.instance()),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
}

impl std::fmt::Display for UnitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '@' | '\\')
}
