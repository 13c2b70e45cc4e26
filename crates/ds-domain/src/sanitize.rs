//! Sanitization of free-text fields (contract §2.7).
//!
//! In order: control characters other than `\t`, `\n`, `\r` (NUL included) are removed; HTML markup is
//! stripped with the `ammonia` sanitizer (no tag is allowed, so every tag goes, `<script>` and `<style>`
//! lose their content too, and text is kept); the text is Unicode-NFC normalised and trimmed.
//!
//! Stored text is plain text, not HTML: ammonia returns HTML-escaped text, which we decode again
//! (`&lt;` → `<`, ...) so that "CPU > 90%" stays "CPU > 90%". Because decoding can reveal markup that was
//! escaped in the input (`&lt;b&gt;`), stripping repeats until the text no longer changes, which makes
//! sanitization idempotent: `sanitize(sanitize(x)) == sanitize(x)`.

use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

/// At most this many strip rounds; each round removes at least one level of escaping.
const MAX_ROUNDS: usize = 8;

fn cleaner() -> &'static ammonia::Builder<'static> {
    static CLEANER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    CLEANER.get_or_init(|| {
        let mut b = ammonia::Builder::empty();
        // `empty()` allows no tag; the content of these is dropped entirely, not kept as text.
        b.clean_content_tags(
            [
                "script", "style", "noscript", "template", "iframe", "object", "textarea", "title",
            ]
            .into(),
        );
        b
    })
}

/// A text holds a character that is neither a control character (Unicode `Cc`, what
/// [`strip_controls`] removes and more) nor white space (Unicode `White_Space`, what `str::trim`
/// removes): the rule "not blank" of hold reasons and search queries, as an ECMA-262 pattern for the
/// OpenAPI document (unanchored: "contains").
pub const NOT_BLANK_PATTERN: &str =
    r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// Removes every control character except tab, line feed and carriage return.
pub fn strip_controls(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// Whether `s` holds a character that [`strip_controls`] would remove.
pub fn has_forbidden_controls(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

fn strip_markup_once(s: &str) -> String {
    let html = cleaner().clean(s).to_string();
    // Undo exactly the escapes that html5ever's text serializer produces.
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Sanitizes one free-text value. The result may be empty (e.g. a value that was only a `<script>`).
pub fn sanitize_text(s: &str) -> String {
    let mut text = strip_controls(s);
    if text.contains(['<', '&']) {
        for _ in 0..MAX_ROUNDS {
            let next = strip_markup_once(&text);
            if next == text {
                break;
            }
            text = next;
        }
    }
    let text = strip_controls(&text);
    text.nfc().collect::<String>().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::script_with_content("<script>alert('x')</script>Pod restarted", "Pod restarted")]
    #[case::style_with_content("<style>body{}</style>ok", "ok")]
    #[case::tags_text_kept("<b>OOMKilled</b> in <i>payments</i>", "OOMKilled in payments")]
    #[case::attributes_and_handlers("<img src=x onerror=alert(1)>memory", "memory")]
    #[case::comparison_kept("CPU > 90% && mem < 10%", "CPU > 90% && mem < 10%")]
    #[case::escaped_markup_stripped("&lt;script&gt;alert(1)&lt;/script&gt;hi", "hi")]
    #[case::entity_decoded("5 &amp; 6", "5 & 6")]
    #[case::nul_removed("a\u{0}b", "ab")]
    #[case::controls_removed("bell\u{7}\u{1b}[31m red", "bell[31m red")]
    #[case::whitespace_controls_kept("line1\n\tline2\r\nline3", "line1\n\tline2\r\nline3")]
    #[case::trimmed("  \n padded \t ", "padded")]
    #[case::nfc("e\u{301}te\u{301}", "\u{e9}t\u{e9}")]
    #[case::c1_control_removed("x\u{85}y", "xy")]
    #[case::only_script("<script>x</script>", "")]
    #[case::sql_is_text("'; DROP TABLE audit_records; --", "'; DROP TABLE audit_records; --")]
    fn sanitizes(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(sanitize_text(input), expected);
    }

    #[rstest]
    #[case("<<b>b</b>>x")]
    #[case("&amp;lt;b&amp;gt;bold")]
    #[case("a < b > c")]
    #[case("<p>Résumé</p>\u{0}")]
    fn is_idempotent(#[case] input: &str) {
        let once = sanitize_text(input);
        assert_eq!(sanitize_text(&once), once);
    }
}
