//! Which line of a YAML text holds a key given as a dotted path with `[index]` steps
//! (`coreos.units[2].command`), so an error can point at it. A reading of block-style YAML
//! by indentation, enough for cloud-configs; `None` when the path is not found that way.

/// One step of a path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part
            .split_once('[')
            .map_or((part, ""), |(key, rest)| (key, rest));
        if !key.is_empty() {
            steps.push(Step::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(index) = index.parse() {
                steps.push(Step::Index(index));
            }
            rest = after.strip_prefix('[').unwrap_or("");
        }
    }
    steps
}

/// A line's shape: where its first character is, where its key starts (after any `- `
/// sequence markers), and the key.
struct Shape<'a> {
    indent: usize,
    key_column: usize,
    dash: bool,
    key: Option<&'a str>,
}

fn shape(line: &str) -> Option<Shape<'_>> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let indent = line.len() - trimmed.len();
    let mut rest = trimmed;
    let mut key_column = indent;
    let dash = rest.starts_with("- ") || rest == "-";
    while let Some(after) = rest.strip_prefix("- ") {
        let inner = after.trim_start();
        key_column += rest.len() - inner.len();
        rest = inner;
    }
    let key = rest
        .split_once(':')
        .filter(|(key, value)| {
            !key.is_empty() && !key.contains(' ') && (value.is_empty() || value.starts_with(' '))
        })
        .map(|(key, _)| key.trim_matches(['"', '\'']));
    Some(Shape {
        indent,
        key_column,
        dash,
        key,
    })
}

fn same_key(written: &str, wanted: &str) -> bool {
    written.replace('-', "_") == wanted.replace('-', "_")
}

/// The 1-based line of `path` in `text`.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let shapes: Vec<Option<Shape<'_>>> = lines.iter().map(|line| shape(line)).collect();
    let (mut start, mut end) = (0, lines.len());
    let mut found = None;
    for step in steps(path) {
        let block: Vec<usize> = (start..end).filter(|&i| shapes[i].is_some()).collect();
        match step {
            Step::Key(key) => {
                let column = block
                    .iter()
                    .filter_map(|&i| shapes[i].as_ref().filter(|s| s.key.is_some()))
                    .map(|s| s.key_column)
                    .min()?;
                let at = *block.iter().find(|&&i| {
                    shapes[i].as_ref().is_some_and(|s| {
                        s.key_column == column && s.key.is_some_and(|k| same_key(k, key))
                    })
                })?;
                found = Some(at);
                // The key's value: the lines below it that are indented deeper, and a
                // sequence at its own indentation.
                end = (at + 1..end)
                    .find(|&i| {
                        shapes[i]
                            .as_ref()
                            .is_some_and(|s| s.indent < column || (s.indent == column && !s.dash))
                    })
                    .unwrap_or(end);
                start = at + 1;
            }
            Step::Index(index) => {
                let column = block
                    .iter()
                    .filter_map(|&i| shapes[i].as_ref().filter(|s| s.dash))
                    .map(|s| s.indent)
                    .min()?;
                let items: Vec<usize> = block
                    .iter()
                    .copied()
                    .filter(|&i| {
                        shapes[i]
                            .as_ref()
                            .is_some_and(|s| s.dash && s.indent == column)
                    })
                    .collect();
                let at = *items.get(index)?;
                found = Some(at);
                end = items.get(index + 1).copied().unwrap_or(end);
                start = at;
            }
        }
    }
    found.map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r"#cloud-config
hostname: node1
coreos:
  etcd2:
    name: node1
    initial-cluster: x
  units:
  - name: a.service
    command: start
  - name: b.service
    content: |
      [Service]
      ExecStart=/bin/true
    command: sttart
write_files:
  - path: /etc/x
    permissions: '0999'
";

    #[test]
    fn keys_are_found_by_path_with_dashes_read_as_underscores() {
        assert_eq!(line_of(TEXT, "hostname"), Some(2));
        assert_eq!(line_of(TEXT, "coreos.etcd2.initial_cluster"), Some(6));
        assert_eq!(line_of(TEXT, "coreos.units[1].command"), Some(14));
        assert_eq!(line_of(TEXT, "coreos.units[1]"), Some(10));
        assert_eq!(line_of(TEXT, "write_files[0].permissions"), Some(17));
        assert_eq!(line_of(TEXT, "coreos.fleet"), None);
    }
}
