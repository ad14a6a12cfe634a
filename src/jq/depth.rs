//! How deeply a JSON text nests, found without parsing it: jaq's reader recurses once per
//! level with no limit of its own, so a payload of a few thousand `[` overflows its stack.
//! The daemon measures before anything parses, and refuses past [`MAX_DEPTH`] (serde_json's
//! own limit, which every other payload path already has).

/// The deepest nesting a filter's input may have.
pub const MAX_DEPTH: usize = 128;

/// Whether `json` nests deeper than `max` arrays and objects. Brackets inside strings do not
/// count; the text need not be valid JSON (the parser says what else is wrong with it).
pub fn deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_as_a_table() {
        let deep = "[".repeat(8000);
        let at_limit = format!("{}{}", "[".repeat(3), "]".repeat(3));
        #[rustfmt::skip]
        let table: &[(&str, usize, bool)] = &[
            ("{}", 0, true),
            ("{}", 1, false),
            ("1", 0, false),
            (&at_limit, 3, false),
            (&at_limit, 2, true),
            (r#"{"a":"[[[[[[[["}"#, 1, false),
            (r#"{"a":"\"[[[["}"#, 1, false),
            (r#"{"a":"\\", "b":[[1]]}"#, 2, true),
            (r#"[{"a":[{}]}]"#, 4, false),
            (r#"[{"a":[{}]}]"#, 3, true),
            (&deep, MAX_DEPTH, true),
            ("]]]]][", 1, false),
        ];
        for (json, max, want) in table {
            assert_eq!(
                deeper_than(json.as_bytes(), *max),
                *want,
                "{json:.40} > {max}"
            );
        }
    }
}
