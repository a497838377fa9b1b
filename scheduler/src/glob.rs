//! Shell-style globs as fleet matches unit names (Go's `path.Match`): `*` any run of characters,
//! `?` one character, `[abc]`, `[a-z]` and `[^...]`/`[!...]` classes, `\` escapes.

/// Does `name` match `pattern`? A malformed pattern matches only itself, literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    matches_from(&pattern, &name).unwrap_or_else(|| pattern == name)
}

/// `None` when the pattern is malformed.
fn matches_from(pattern: &[char], name: &[char]) -> Option<bool> {
    let Some((&first, rest)) = pattern.split_first() else {
        return Some(name.is_empty());
    };
    match first {
        '*' => {
            for skip in 0..=name.len() {
                if matches_from(rest, &name[skip..])? {
                    return Some(true);
                }
            }
            Some(false)
        }
        '?' => match name.split_first() {
            Some((_, tail)) => matches_from(rest, tail),
            None => Some(false),
        },
        '[' => {
            let (matched, after_class) = match_class(rest, name.first().copied())?;
            match (matched, name.split_first()) {
                (true, Some((_, tail))) => matches_from(after_class, tail),
                _ => Some(false),
            }
        }
        '\\' => {
            let (&escaped, after) = rest.split_first()?;
            match name.split_first() {
                Some((&c, tail)) if c == escaped => matches_from(after, tail),
                _ => Some(false),
            }
        }
        literal => match name.split_first() {
            Some((&c, tail)) if c == literal => matches_from(rest, tail),
            _ => Some(false),
        },
    }
}

/// Matches `c` against the class starting after `[`; returns the match and the rest of the
/// pattern after `]`.
fn match_class(class: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match class.split_first() {
        Some(('^' | '!', tail)) => (true, tail),
        _ => (false, class),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&low, tail) = rest.split_first()?;
        if low == ']' && !first {
            let hit = c.is_some() && matched != negated;
            return Some((hit, tail));
        }
        first = false;
        rest = tail;
        let high = match rest {
            ['-', high, tail @ ..] if *high != ']' => {
                rest = tail;
                *high
            }
            _ => low,
        };
        if c.is_some_and(|c| low <= c && c <= high) {
            matched = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn star_question_and_classes() {
        assert!(glob_match("foo*.service", "foo@1.service"));
        assert!(glob_match("*", "anything.service"));
        assert!(!glob_match("foo*.service", "bar.service"));
        assert!(glob_match("web?.service", "web1.service"));
        assert!(!glob_match("web?.service", "web12.service"));
        assert!(glob_match("web[0-9].service", "web7.service"));
        assert!(!glob_match("web[^0-9].service", "web7.service"));
        assert!(glob_match("web[!0-9].service", "webx.service"));
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
    }

    #[test]
    fn malformed_pattern_matches_itself_only() {
        assert!(glob_match("web[0-9", "web[0-9"));
        assert!(!glob_match("web[0-9", "web1"));
    }
}
