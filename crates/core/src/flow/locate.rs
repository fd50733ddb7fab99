//! Maps a JSON pointer to the line and column of its value in the document's text, so problems
//! can say `file:line:column` like a compiler.

/// `(line, column)`, both from 1, of the value at `pointer`; `None` if the text does not parse
/// that far or the pointer names nothing.
pub fn locate(text: &str, pointer: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut at = skip_ws(bytes, 0);
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match bytes.get(at)? {
            b'{' => find_member(bytes, at, &token)?,
            b'[' => find_element(bytes, at, token.parse().ok()?)?,
            _ => return None,
        };
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// The end of the string starting at `at` (a `"`), and its raw content.
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The end of the value starting at `at`.
fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&b) = bytes.get(i) {
                match b {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = at;
            while bytes
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            Some(i)
        }
    }
}

fn find_member(bytes: &[u8], open: usize, name: &str) -> Option<usize> {
    let mut at = skip_ws(bytes, open + 1);
    while bytes.get(at) == Some(&b'"') {
        let key_end = string_end(bytes, at)?;
        let key: String = serde_json::from_slice(&bytes[at..key_end]).ok()?;
        let colon = skip_ws(bytes, key_end);
        let value = skip_ws(bytes, colon + 1);
        if key == name {
            return Some(value);
        }
        at = skip_ws(bytes, value_end(bytes, value)?);
        if bytes.get(at) == Some(&b',') {
            at = skip_ws(bytes, at + 1);
        }
    }
    None
}

fn find_element(bytes: &[u8], open: usize, index: usize) -> Option<usize> {
    let mut at = skip_ws(bytes, open + 1);
    for _ in 0..index {
        at = skip_ws(bytes, value_end(bytes, at)?);
        if bytes.get(at) != Some(&b',') {
            return None;
        }
        at = skip_ws(bytes, at + 1);
    }
    (bytes.get(at) != Some(&b']')).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn finds_values_by_pointer() {
        let text = "{\n  \"a\": {\"b/c\": [1, {\"d\": \"x\\\"y\"}, 3]},\n  \"steps\": [\n    {\"id\": \"s\"}\n  ]\n}";
        assert_eq!(locate(text, ""), Some((1, 1)));
        assert_eq!(locate(text, "/a"), Some((2, 8)));
        assert_eq!(locate(text, "/a/b~1c/1/d"), Some((2, 26)));
        assert_eq!(locate(text, "/a/b~1c/2"), Some((2, 35)));
        assert_eq!(locate(text, "/steps/0/id"), Some((4, 12)));
        assert_eq!(locate(text, "/steps/1"), None);
        assert_eq!(locate(text, "/nope"), None);
    }
}
