//! The `fetch` input: one URL a line, a JSON array of `{"id": "...", "url": "..."}`
//! items or URL strings (also wrapped as the MCP tool's arguments,
//! `{"items": [...]}`), or JSON Lines: one item object a line, as `fetch`
//! writes its records, so a run's failures can be fed back to it.
//!
//! Input is checked whole before anything is fetched, and the first problem
//! is reported with the line or item it is on. Items are numbered from 1 in
//! every form (a line by its line number, a JSON item by its position), and
//! an item without an id is named by its number; the MCP tool's items follow
//! the same rules ([`InputItem`], [`name_items`]). Input echoed in a message
//! is cut short and its control characters escaped ([`clip`]).

use std::borrow::Cow;
use std::collections::HashMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, de::Error as _};

/// One item to fetch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub(crate) struct Item {
    /// The caller's name for the item; when not given, its number counting
    /// from 1 (its line number in the line form).
    pub(crate) id: String,
    /// An absolute http or https URL.
    pub(crate) url: String,
}

/// An id as the caller gave it: a string, or an integer of up to 64 bits,
/// kept as written. Any other number is refused: serde_json reads it as a
/// float, which is not what was written (`1e2` read as `100.0`) and can
/// make two ids one (12345678901234567890123 and ...124).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GivenId(String);

impl<'de> Deserialize<'de> for GivenId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(Self(s)),
            serde_json::Value::Number(x) if x.is_i64() || x.is_u64() => Ok(Self(x.to_string())),
            serde_json::Value::Number(x) => Err(D::Error::custom(format!(
                "a numeric id must be an integer from {} to {} to be kept as written (this one \
                 reads as {x}); send it as a string",
                i64::MIN,
                u64::MAX
            ))),
            other => Err(D::Error::custom(format!(
                "id must be a string or an integer, not {}",
                clip(&other.to_string())
            ))),
        }
    }
}

impl JsonSchema for GivenId {
    fn schema_name() -> Cow<'static, str> {
        "ItemId".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "integer"] })
    }
}

/// One URL to fetch: an object, or a bare URL string (`{"url": ...}`).
///
/// An object may also carry the other fields of a record `fanout fetch`
/// wrote (`ok`, `status`, ...), which are ignored, so its output can be fed
/// back; any other field is refused, so a misspelt `id` or `url` is not
/// silently dropped. The schema states the object form alone.
#[derive(Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputItem {
    /// Your name for this item (a string, or an integer of up to 64 bits:
    /// send a larger number as a string), echoed in its result.
    /// When absent, the item's number counting from 1 (`N.1`, `N.2`, ... if
    /// another item was given `N` as its id).
    #[serde(default)]
    id: Option<GivenId>,
    /// An absolute http or https URL.
    url: String,
}

/// What every refusal of an item's shape ends with.
const ITEM_SHAPE: &str = r#"(each item is {"id": "...", "url": "..."} or a URL string)"#;

/// The fields of a `fanout fetch` record (`engine::Record`) besides `id`
/// and `url`: an input item may carry them, and they are dropped.
const RECORD_FIELDS: [&str; 6] = ["ok", "status", "error", "attempts", "latency_ms", "bytes"];

/// [`InputItem`]'s object form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemFields {
    #[serde(default)]
    id: Option<GivenId>,
    url: String,
}

impl<'de> Deserialize<'de> for InputItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde_json::Value;
        let mut fields = match Value::deserialize(deserializer)? {
            Value::String(url) => return Ok(Self { id: None, url }),
            Value::Object(fields) => fields,
            other => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "an array",
                };
                return Err(D::Error::custom(format!(
                    "{kind} is not an item {ITEM_SHAPE}"
                )));
            }
        };
        for field in RECORD_FIELDS {
            fields.remove(field);
        }
        let ItemFields { id, url } = ItemFields::deserialize(Value::Object(fields))
            .map_err(|e| D::Error::custom(format!("{} {ITEM_SHAPE}", clip(&e.to_string()))))?;
        Ok(Self { id, url })
    }
}

/// Input echoed in a message: whole when short, else its first 200
/// characters and its size, so a 100 KB line does not come back whole on
/// stderr (or to an MCP client); its control characters escaped as Rust
/// writes them (`\u{1b}`, `\0`), so an ESC sequence in a URL cannot retitle
/// or clear the terminal that shows the message.
pub(crate) fn clip(text: &str) -> Cow<'_, str> {
    const SHOWN: usize = 200;
    match text.char_indices().nth(SHOWN) {
        None => escape_controls(text),
        Some((end, _)) => Cow::Owned(format!(
            "{}… ({} bytes)",
            escape_controls(&text[..end]),
            text.len()
        )),
    }
}

/// `text` with each control character escaped (`char::escape_debug`); the
/// rest, backslashes included, as it is.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// The longest URL `http::Uri` takes; it refuses a longer one as "uri too
/// long", without the limit.
const MAX_URL_BYTES: usize = u16::MAX as usize - 1;

/// Parses `text` in any form, accepting at most `max_items`.
pub(crate) fn parse(text: &str, max_items: usize) -> Result<Vec<Item>, String> {
    // A UTF-8 byte order mark (some editors write one) is not part of the input.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    let invalid = |e: serde_json::Error| format!("invalid JSON input: {}", clip(&e.to_string()));
    // JSON is parsed from `text`, not `trimmed`, so an error's line counts
    // the blank lines before it.
    let items = if trimmed.starts_with('[') {
        parse_json(serde_json::from_str(text).map_err(invalid)?)?
    } else if trimmed.starts_with('{') {
        // No URL starts with `{`. One object with `items`, however laid
        // out, is the MCP tool's arguments; anything else is JSON Lines.
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) if value.get("items").is_some() => {
                // Read again from the text only on an error, for its
                // position (an error from the parsed value has none).
                let batch = serde_json::from_value::<Batch>(value)
                    .or_else(|_| serde_json::from_str::<Batch>(text))
                    .map_err(invalid)?;
                parse_json(batch.items)?
            }
            Ok(_) => parse_json_lines(text)?,
            // A broken document that starts as the tool's arguments is one
            // JSON value, most likely pretty-printed: its own error names
            // the fault, where JSON Lines would blame its first line.
            Err(e) => parse_json_lines(text).map_err(|lines| {
                if starts_as_batch(trimmed) {
                    invalid(e)
                } else {
                    lines
                }
            })?,
        }
    } else {
        parse_lines(text)?
    };
    check(items, max_items)
}

/// Whether `text` opens as `{"items":`, the MCP tool's arguments.
fn starts_as_batch(text: &str) -> bool {
    text.strip_prefix('{')
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix(r#""items""#))
        .is_some_and(|rest| rest.trim_start().starts_with(':'))
}

fn parse_lines(text: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_url(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        items.push(Item {
            id: (n + 1).to_string(),
            url: line.to_string(),
        });
    }
    Ok(items)
}

/// The MCP tool's arguments, which `fetch` takes as well as the bare array.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    items: Vec<serde_json::Value>,
}

fn parse_json(raw: Vec<serde_json::Value>) -> Result<Vec<Item>, String> {
    let mut items = Vec::with_capacity(raw.len());
    for (n, value) in raw.into_iter().enumerate() {
        let item: InputItem =
            serde_json::from_value(value).map_err(|e| format!("item {}: {e}", n + 1))?;
        items.push(item);
    }
    name_items(items)
}

/// JSON Lines: one item a line (blank lines skipped), numbered and named
/// by its line as in the line form.
fn parse_json_lines(text: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // Parsed in two steps, so an error says nothing of "line 1": the
        // line is named already.
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            let position = format!(" at line {} column {}", e.line(), e.column());
            let text = e.to_string();
            format!(
                "line {}, column {}: invalid JSON ({}); JSON Lines input is one whole JSON \
                 object a line (`jq -c` writes them so)",
                n + 1,
                e.column(),
                clip(text.strip_suffix(&position).unwrap_or(&text))
            )
        })?;
        let item: InputItem =
            serde_json::from_value(value).map_err(|e| format!("line {}: {e}", n + 1))?;
        items.push((n + 1, item));
    }
    name_numbered(items, "line")
}

/// Names the items of a JSON list (`fetch`'s JSON form, the MCP tool's
/// `items`) and checks their URLs: a given id is kept, and must not be given
/// to two items; an item without one is named by its number counting from 1,
/// or, when another item was given that number as its id, by the first of
/// `N.1`, `N.2`, ... that no item was given.
pub(crate) fn name_items(items: Vec<InputItem>) -> Result<Vec<Item>, String> {
    name_numbered(
        items.into_iter().zip(1..).map(|(i, n)| (n, i)).collect(),
        "item",
    )
}

/// [`name_items`] for items numbered by the caller (JSON Lines, by line),
/// named in messages as `what` and its number.
fn name_numbered(items: Vec<(usize, InputItem)>, what: &str) -> Result<Vec<Item>, String> {
    let mut given: HashMap<&str, usize> = HashMap::new();
    for (number, item) in &items {
        if let Some(GivenId(id)) = &item.id
            && let Some(first) = given.insert(id, *number)
        {
            return Err(format!(
                "{what}s {first} and {number} both have the id `{}`; ids must be unique",
                clip(id)
            ));
        }
    }
    let mut named = Vec::with_capacity(items.len());
    for &(number, ref item) in &items {
        let id = match &item.id {
            Some(GivenId(id)) => id.clone(),
            None if !given.contains_key(number.to_string().as_str()) => number.to_string(),
            // Each given id rules out at most one stand-in, and `number`
            // itself is one of them and rules out none, so one of the first
            // `given.len()` is free.
            None => (1..=given.len())
                .map(|k| format!("{number}.{k}"))
                .find(|id| !given.contains_key(id.as_str()))
                .unwrap_or_else(|| format!("{number}.0")),
        };
        check_url(&item.url).map_err(|e| format!("{what} {number} (id {}): {e}", clip(&id)))?;
        named.push(Item {
            id,
            url: item.url.clone(),
        });
    }
    Ok(named)
}

/// Checks a whole list: size and unique ids.
pub(crate) fn check(items: Vec<Item>, max_items: usize) -> Result<Vec<Item>, String> {
    if items.is_empty() {
        return Err("no URLs in the input".to_string());
    }
    if items.len() > max_items {
        return Err(format!(
            "{} items is more than the maximum of {max_items}; split the input or raise --max-items",
            items.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for item in &items {
        if !seen.insert(item.id.as_str()) {
            return Err(format!(
                "id `{}` appears more than once; ids must be unique",
                clip(&item.id)
            ));
        }
    }
    Ok(items)
}

/// An absolute http(s) URL with a host.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let shown = clip(url);
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "`{shown}` is too long: a URL has at most {MAX_URL_BYTES} bytes"
        ));
    }
    // The scheme first, so `file:///etc/passwd` is refused for its scheme
    // rather than reported as an odd URL.
    if let Some((scheme, _)) = url.split_once(':')
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
        && !scheme.contains('.')
    {
        return Err(format!(
            "`{shown}`: scheme `{}` is not allowed; use http or https",
            clip(scheme)
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{shown}` is not a valid URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "`{shown}`: scheme `{}` is not allowed; use http or https",
                clip(other)
            ));
        }
        None => {
            return Err(format!(
                "`{shown}` is not an absolute URL; start it with http:// or https://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{shown}` has no host"));
    }
    // `http::Uri` takes any digits as the port, and a port past 65535 reads
    // as none: the request would go to the scheme's default port instead.
    if let Some(port) = tower_fanout_http::guard::port_out_of_range(&uri) {
        return Err(format!(
            "`{shown}`: port {} is out of range (a port is 0 to 65535)",
            clip(port)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lines_skip_blanks_and_comments_and_number_by_line() {
        let items = parse("https://a.test/x\n\n# note\nhttp://b.test/y\n", 10).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].id, "1");
        assert_eq!(items[1].id, "4");
    }

    #[test]
    fn json_items_with_and_without_ids() {
        let items = parse(r#"[{"id":"a","url":"https://a.test/"},{"url":"https://b.test/"},{"id":7,"url":"http://c.test"}]"#, 10).unwrap();
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "2", "7"]);
    }

    #[test]
    fn bad_input_names_the_line_or_item() {
        assert_eq!(
            parse("https://ok.test/\nnot a url\n", 10)
                .unwrap_err()
                .split(':')
                .next(),
            Some("line 2")
        );
        assert!(
            parse("https://ok.test/\nftp://x.test/f\n", 10)
                .unwrap_err()
                .contains("scheme `ftp`")
        );
        assert!(
            parse(r#"[{"id":"a","url":"https://a.test/"},{"id":"b"}]"#, 10)
                .unwrap_err()
                .starts_with("item 2")
        );
        assert!(
            parse(r#"[{"id":"a","url":"file:///etc/passwd"}]"#, 10)
                .unwrap_err()
                .contains("item 1 (id a)")
        );
        assert!(parse("[1, 2", 10).unwrap_err().starts_with("invalid JSON"));
        assert!(
            parse(r#"[{"id":"a","url":"https://a.test/","extra":1}]"#, 10)
                .unwrap_err()
                .contains("unknown field")
        );
    }

    /// An item without an id is named by its number, or by the first free
    /// `N.k` when another item took `N`; the stand-ins never repeat a given id.
    #[test]
    fn a_number_taken_as_an_id_moves_the_stand_in_aside() {
        let items = parse(
            r#"[{"id":"2","url":"https://a.test/"},{"url":"https://b.test/"},{"id":"2.1","url":"https://c.test/"},{"id":"2.2","url":"https://d.test/"},{"url":"https://e.test/"}]"#,
            10,
        )
        .unwrap();
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["2", "2.3", "2.1", "2.2", "5"]);
    }

    /// The scheme is named in the refusal even where `http::Uri` could not
    /// parse the rest (`file:///` has an empty authority).
    #[test]
    fn a_scheme_other_than_http_is_named() {
        for (url, scheme) in [
            ("file:///etc/passwd", "file"),
            ("gopher://x.test/", "gopher"),
            ("svn+ssh://x.test/r", "svn+ssh"),
        ] {
            let err = check_url(url).unwrap_err();
            assert!(
                err.contains(&format!("scheme `{scheme}` is not allowed")),
                "{url}: {err}"
            );
        }
        // A colon first is no scheme at all.
        let err = check_url(":x").unwrap_err();
        assert!(!err.contains("scheme"), "{err}");
    }

    /// The tool's schema takes an id as a string or an integer, inline (no
    /// `$ref` an MCP client would have to resolve).
    #[test]
    fn the_schema_takes_a_string_or_integer_id_inline() {
        let schema = serde_json::to_value(schemars::schema_for!(InputItem)).unwrap();
        assert_eq!(
            schema["properties"]["id"]["type"],
            serde_json::json!(["string", "integer", "null"]),
            "{schema:#}"
        );
        assert!(schema.get("$defs").is_none(), "{schema:#}");
    }

    /// JSON Lines, the shape `fanout fetch` writes, was refused ("unknown
    /// field `id`, expected `items`"), so its failures could not be fed
    /// back. Each line is an item, named by its line; a record's other
    /// fields are ignored, any other field still refused.
    #[test]
    fn json_lines_are_items_and_a_record_fanout_wrote_is_one() {
        let record = serde_json::to_string(&crate::engine::Record {
            id: "r".to_string(),
            url: "https://r.test/".to_string(),
            ok: false,
            status: Some(503),
            error: Some("connection failed".to_string()),
            attempts: 3,
            latency_ms: 12,
            bytes: 0,
        })
        .unwrap();
        let text = format!(
            "{{\"id\":\"a\",\"url\":\"https://a.test/\"}}\n\n{{\"url\":\"https://b.test/\"}}\n{record}\n"
        );
        let items = parse(&text, 10).unwrap();
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "3", "r"]);
        assert_eq!(items[2].url, "https://r.test/");
        // One object alone is a line too.
        assert_eq!(
            parse(r#"{"url":"https://a.test/"}"#, 10).unwrap()[0].id,
            "1"
        );

        for (text, expected) in [
            (
                "{\"url\":\"https://a.test/\"}\n{\"url\":\"https://b.test/\",\"extra\":1}",
                "line 2: unknown field `extra`",
            ),
            (
                "{\"url\":\"https://a.test/\"}\nhttps://b.test/",
                "line 2, column 1: invalid JSON",
            ),
            (
                "{\"url\":\"https://a.test/\"}\n{\"url\":\"ftp://b.test/\"}",
                "line 2 (id 2): `ftp://b.test/`",
            ),
            (
                "{\"id\":\"x\",\"url\":\"https://a.test/\"}\n\n{\"id\":\"x\",\"url\":\"https://b.test/\"}",
                "lines 1 and 3 both have the id `x`",
            ),
            (
                &"{\"url\":\"https://a.test/\"}\n".repeat(11),
                "more than the maximum of 10",
            ),
        ] {
            let err = parse(text, 10).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("at line"), "{err}");
        }
    }

    /// An array of URL strings was refused as "expected struct InputItem",
    /// a Rust type's name; a string is `{"url": ...}` now, and another
    /// kind of item is refused saying what an item is.
    #[test]
    fn an_array_of_url_strings_is_taken() {
        let items = parse(
            r#"["https://a.test/",{"id":"b","url":"https://b.test/"}]"#,
            10,
        )
        .unwrap();
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["1", "b"]);
        assert_eq!(items[0].url, "https://a.test/");
        let err = parse(r#"["https://a.test/", 5]"#, 10).unwrap_err();
        assert!(
            err.starts_with("item 2: a number is not an item")
                && err.contains("or a URL string")
                && !err.contains("InputItem"),
            "{err}"
        );
    }

    /// A refused 100 KB line came back whole (on stderr, and to an MCP
    /// client); input echoed in a message is cut to its first 200
    /// characters and its size, and a URL past what `http::Uri` takes says
    /// so, with the limit ("uri too long" did not).
    #[test]
    fn long_input_is_echoed_cut_short() {
        let long = format!("http://x.test/{}", "a".repeat(100_000));
        let err = parse(&long, 10).unwrap_err();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(
            err.contains("… (100014 bytes)") && err.contains("at most 65534 bytes"),
            "{err}"
        );
        let spaced = format!("http://x.test/ {}", "a".repeat(10_000));
        assert!(parse(&spaced, 10).unwrap_err().len() < 400);
        let id = "i".repeat(10_000);
        let dup = format!(
            r#"[{{"id":"{id}","url":"https://a.test/"}},{{"id":"{id}","url":"https://a.test/"}}]"#
        );
        assert!(parse(&dup, 10).unwrap_err().len() < 400);
        let key = format!(r#"[{{"url":"https://a.test/","{id}":1}}]"#);
        assert!(parse(&key, 10).unwrap_err().len() < 400);
        // Short input is shown whole.
        assert_eq!(clip("https://a.test/"), "https://a.test/");
    }

    #[test]
    fn limits_and_duplicates() {
        let exactly = "https://a.test/\n".repeat(10);
        assert_eq!(parse(&exactly, 10).unwrap().len(), 10);
        let many = "https://a.test/\n".repeat(11);
        assert!(
            parse(&many, 10)
                .unwrap_err()
                .contains("more than the maximum of 10")
        );
        assert!(parse("", 10).unwrap_err().contains("no URLs"));
        let dup = r#"[{"id":"a","url":"https://a.test/"},{"id":"a","url":"https://b.test/"}]"#;
        assert!(
            parse(dup, 10)
                .unwrap_err()
                .contains("items 1 and 2 both have the id `a`")
        );
    }

    /// A port past 65535 is no port at all to the HTTP stack, which then
    /// dialled the scheme's default port: `http://host:99999/` fetched
    /// `http://host:80/` and reported it as the item's answer.
    #[test]
    fn a_port_out_of_range_is_refused() {
        for url in [
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:65536/x",
            "https://user:pw@example.test:4294967296/",
            "http://[::1]:70000/",
            "http://example.test:00000000000000000000080000/",
        ] {
            let err = check_url(url).unwrap_err();
            assert!(err.contains("port"), "{url}: {err}");
        }
        for url in [
            "http://127.0.0.1:65535/",
            "http://[::1]:8080/",
            "http://u:p@example.test:443/",
            "http://example.test/",
            "http://example.test:/",
            "http://[::1]/",
        ] {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the input, parsing answers: items that all have an
            /// http(s) URL and unique ids, or one message; it never panics.
            #[test]
            fn any_text_is_parsed_or_refused_with_a_message(text in "\\PC{0,400}") {
                match parse(&text, 50) {
                    Ok(items) => {
                        prop_assert!(!items.is_empty() && items.len() <= 50);
                        for item in &items {
                            prop_assert!(check_url(&item.url).is_ok());
                        }
                    }
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }

            /// JSON-shaped input with arbitrary ids and URLs, the MCP tool's shape too.
            #[test]
            fn json_items_are_checked_whole(
                items in proptest::collection::vec((proptest::option::of("[a-z0-9]{0,4}"), "\\PC{0,30}"), 0..20)
            ) {
                let json: Vec<serde_json::Value> = items
                    .iter()
                    .map(|(id, url)| match id {
                        Some(id) => serde_json::json!({"id": id, "url": url}),
                        None => serde_json::json!({"url": url}),
                    })
                    .collect();
                let text = serde_json::Value::Array(json).to_string();
                if let Ok(parsed) = parse(&text, 10) {
                    prop_assert!(parsed.len() <= 10);
                    prop_assert!(parsed.iter().all(|i| check_url(&i.url).is_ok()));
                }
            }
        }
    }
}
