//! A whole batch bound as one value per statement parameter, so that every batch size runs
//! the same statement text, prepared once per connection (sqlx's statement cache) instead of
//! once per size: PostgreSQL array literals cast in SQL (`$1::bigint[]`, read with `unnest`;
//! the `Any` driver binds no arrays), and SQLite JSON arrays of rows (read with `json_each`).
//! Pure encoding: nothing here talks to a database.

/// One value of a row written by [`sqlite_json_rows`].
pub(super) enum Json<'a> {
    /// An integer, or `null` for `None` (which `->>` reads as SQL NULL).
    Int(Option<i64>),
    Text(&'a str),
}

/// A JSON array of `rows`, each an array of its values: a row of one value is written as
/// the value alone (`[1,2]`, for `SELECT value FROM json_each(?)`), longer rows as arrays
/// (`[["u",1,null]]`, read as `value ->> 0`, `value ->> 1`, …). Written here rather than by
/// serde: nothing in it can fail, and the texts (user ids) need only JSON's string escapes.
pub(super) fn sqlite_json_rows<'a, const N: usize>(
    rows: impl Iterator<Item = [Json<'a>; N]>,
) -> String {
    use std::fmt::Write;
    let mut json = String::from("[");
    for (n, row) in rows.enumerate() {
        if n > 0 {
            json.push(',');
        }
        if N > 1 {
            json.push('[');
        }
        for (m, value) in row.iter().enumerate() {
            if m > 0 {
                json.push(',');
            }
            match value {
                // Writing to a String cannot fail.
                Json::Int(Some(number)) => {
                    let _ = write!(json, "{number}");
                }
                Json::Int(None) => json.push_str("null"),
                Json::Text(text) => push_json_string(&mut json, text),
            }
        }
        if N > 1 {
            json.push(']');
        }
    }
    json.push(']');
    json
}

/// `text` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn push_json_string(json: &mut String, text: &str) {
    use std::fmt::Write;
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(json, "\\u{:04x}", u32::from(c));
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

/// A PostgreSQL array literal of `items` (`{"a","b\"c"}`), bound as text and cast to `text[]`:
/// the `Any` driver binds no arrays. Every element is quoted, so `NULL`, commas, braces and
/// spaces stay data; inside quotes only `"` and `\` need a backslash.
pub(super) fn postgres_text_array<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    let mut literal = String::from("{");
    for (n, item) in items.enumerate() {
        if n > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.as_ref().chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// A PostgreSQL array literal of integers, for `$N::bigint[]`.
pub(super) fn postgres_int_array(items: impl Iterator<Item = i64>) -> String {
    postgres_nullable_int_array(items.map(Some))
}

/// [`postgres_int_array`] with `NULL` for `None`. Written into one string: a batch's arrays
/// are built on every commit.
pub(super) fn postgres_nullable_int_array(items: impl Iterator<Item = Option<i64>>) -> String {
    use std::fmt::Write;
    let mut literal = String::from("{");
    for (n, item) in items.enumerate() {
        if n > 0 {
            literal.push(',');
        }
        match item {
            // Writing to a String cannot fail.
            Some(number) => {
                let _ = write!(literal, "{number}");
            }
            None => literal.push_str("NULL"),
        }
    }
    literal.push('}');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_json_rows_are_arrays_of_rows_with_every_text_escaped() {
        let rows = [
            [Json::Text("a"), Json::Int(Some(-1)), Json::Int(None)],
            [
                Json::Text("q\"u\\o\u{1}é"),
                Json::Int(Some(i64::MIN)),
                Json::Int(Some(0)),
            ],
        ];
        assert_eq!(
            sqlite_json_rows(rows.into_iter()),
            r#"[["a",-1,null],["q\"u\\o\u0001é",-9223372036854775808,0]]"#
        );
        assert_eq!(
            sqlite_json_rows([1, 2].into_iter().map(|n| [Json::Int(Some(n))])),
            "[1,2]"
        );
        assert_eq!(sqlite_json_rows(std::iter::empty::<[Json; 3]>()), "[]");
    }

    #[test]
    fn postgres_array_literals_quote_every_element() {
        let ids = [
            "a",
            "NULL",
            "x,y",
            "{z}",
            r#"q"uote"#,
            r"back\slash",
            " sp ",
            "é",
        ];
        assert_eq!(
            postgres_text_array(ids.into_iter()),
            r#"{"a","NULL","x,y","{z}","q\"uote","back\\slash"," sp ","é"}"#
        );
        assert_eq!(postgres_text_array(std::iter::empty::<&str>()), "{}");
        assert_eq!(
            postgres_int_array([1, -2, i64::MIN].into_iter()),
            "{1,-2,-9223372036854775808}"
        );
    }
}
