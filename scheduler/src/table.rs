//! fleetctl's table output: Go's tabwriter with tab padding (min width 0, tab width 8,
//! padding 1), so columns line up at tab stops exactly as fleetctl prints them.

use std::collections::BTreeMap;

const TAB_WIDTH: usize = 8;

/// Formats rows (the header first, unless omitted) into tab-aligned lines.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.chars().count() + 1);
        }
    }
    let widths: Vec<usize> = widths
        .into_iter()
        .map(|w| w.div_ceil(TAB_WIDTH) * TAB_WIDTH)
        .collect();
    let mut out = String::new();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if index + 1 < row.len() {
                let gap = widths[index] - cell.chars().count();
                out.push_str(&"\t".repeat(gap.div_ceil(TAB_WIDTH)));
            }
        }
        out.push('\n');
    }
    out
}

/// Formats metadata the way fleetctl prints it: `k=v,k=v`, or `-`.
pub fn format_metadata(metadata: &BTreeMap<String, String>) -> String {
    if metadata.is_empty() {
        return "-".into();
    }
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_align_on_tab_stops() {
        let rows = vec![
            vec![
                "MACHINE".to_string(),
                "IP".to_string(),
                "METADATA".to_string(),
            ],
            vec![
                "113f16a7...".to_string(),
                "172.17.8.101".to_string(),
                "-".to_string(),
            ],
        ];
        assert_eq!(
            render(&rows),
            "MACHINE\t\tIP\t\tMETADATA\n113f16a7...\t172.17.8.101\t-\n"
        );
    }
}
