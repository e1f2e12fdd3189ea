//! YAML to the policy model, refusing hostile input quickly and in bounded memory, and
//! turning the parser's messages into ones that say what to write instead.

use super::{
    diagnostic::{did_you_mean, Severity, Sink},
    model::PolicyDoc,
    MAX_POLICY_BYTES,
};

/// Limits far above any real policy and far below what could hurt the agent.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 256,
            max_anchors: 256,
            max_depth: 32,
            max_documents: 1,
            max_nodes: 50_000,
            max_total_scalar_bytes: MAX_POLICY_BYTES as usize,
            max_merge_keys: 64,
        },
    }
}

/// Parses one policy file's bytes. On failure the reason is in `sink`.
pub fn parse(bytes: &[u8], sink: &mut Sink) -> Option<PolicyDoc> {
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        sink.whole_file(format!(
            "the file is {} bytes; a policy may be at most {MAX_POLICY_BYTES} bytes",
            bytes.len()
        ));
        return None;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &bytes[..e.valid_up_to()];
            let line = upto.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            let column = (upto.len() - upto.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1))
                as u64
                + 1;
            sink.at_position(
                line,
                column,
                Severity::Error,
                "the file is not UTF-8 text; save it as UTF-8",
            );
            return None;
        }
    };
    if text.trim().is_empty() {
        sink.whole_file("the file is empty; a policy starts with apiVersion: timeguard/v1");
        return None;
    }
    match serde_saphyr::from_str_with_options::<PolicyDoc>(text, options()) {
        Ok(doc) => Some(doc),
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            sink.at_position(
                line,
                column,
                Severity::Error,
                explain_parse_error(&e.to_string()),
            );
            None
        }
    }
}

/// The parser's first line, without its position prefix, rewritten where it speaks of the
/// library rather than of the policy.
fn explain_parse_error(full: &str) -> String {
    let first = full.lines().next().unwrap_or(full);
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    // "line N column M: message"
    let msg = match msg.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") && pos.contains(" column ") => rest,
        _ => msg,
    };
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once("`, expected one of ") {
            let names: Vec<&str> = expected.split(", ").collect();
            return match did_you_mean(field, &names) {
                Some(m) => {
                    format!("unknown key `{field}`; did you mean `{m}`? (keys here: {expected})")
                }
                None => format!("unknown key `{field}`; keys here: {expected}"),
            };
        }
        if let Some((field, expected)) = rest.split_once("`, expected `") {
            let expected = expected.trim_end_matches('`');
            return format!("unknown key `{field}`; the only key here is `{expected}`");
        }
        if let Some(field) = rest.strip_suffix("`, there are no fields") {
            return format!("unknown key `{field}`; nothing may be written here yet");
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let split = rest
            .split_once("`, expected one of ")
            .or_else(|| rest.split_once("`, expected "));
        if let Some((value, expected)) = split {
            let names: Vec<&str> = expected
                .split(", ")
                .flat_map(|n| n.split(" or "))
                .map(|n| n.trim_matches('`'))
                .collect();
            return match did_you_mean(value, &names) {
                Some(m) => format!(
                    "unknown value `{value}`; did you mean `{m}`? (one of: {})",
                    names.join(", ")
                ),
                None => format!(
                    "unknown value `{value}`; write one of: {}",
                    names.join(", ")
                ),
            };
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return format!("missing key `{field}`; add `{field}:` here");
    }
    if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest);
        return format!("key `{key}` is written twice; keep one");
    }
    if let Some(breach) = msg.strip_prefix("budget breached: ") {
        let what = breach.split([' ', '{']).next().unwrap_or(breach);
        let why = match what {
            "Aliases" | "Anchors" => "too many aliases (*name) or anchors (&name): at most 256",
            "Depth" => "nested too deeply: at most 32 levels",
            "Documents" => "more than one document: write one policy per file",
            "Nodes" | "Events" | "ScalarBytes" => "too large to be a policy",
            _ => breach,
        };
        return format!("refused: {why} (limits that protect the agent from hostile YAML)");
    }
    if msg == "expected string scalar" {
        return "expected a single value here, not a list or mapping".into();
    }
    if msg == "expected mapping start" {
        return "expected `key: value` lines here".into();
    }
    if msg.contains("budget") || msg.contains("limit") || msg.contains("exceeded") {
        return format!("refused: {msg} (aliases, nesting and size are limited in policies)");
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<PolicyDoc, String> {
        let mut sink = Sink::new("p.yaml".into());
        parse(text.as_bytes(), &mut sink).ok_or_else(|| {
            sink.found
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn alias_bombs_are_refused_quickly() {
        let mut bomb = String::from("apiVersion: timeguard/v1\nkind: TimePolicy\nmetadata: {name: x}\nspec:\n  clock:\n    rules:\n      - name: a\n        match: {exe: /bin/sh}\n        allow: &a0 [slew, slew]\n");
        // Each level doubles the last: 2^40 operations if expanded.
        for i in 1..40 {
            bomb.push_str(&format!("# level {i}\n"));
        }
        let mut text = String::from("a0: &a0 [x, x]\n");
        for i in 1..40 {
            text.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
        }
        let started = std::time::Instant::now();
        let e = parse_str(&text).err().unwrap_or_default();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert!(e.starts_with("p.yaml:"), "{e}");
        let e = parse_str(&bomb).map(|_| ()).err();
        assert!(e.is_none() || e.is_some_and(|e| e.starts_with("p.yaml:")));
    }

    #[test]
    fn deep_nesting_and_bad_bytes_are_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_str(&deep).err().unwrap_or_default();
        assert!(e.starts_with("p.yaml:1:"), "{e}");
        let mut sink = Sink::new("p.yaml".into());
        assert!(parse(b"apiVersion: timeguard/v1\nkind: \xff\xfe\n", &mut sink).is_none());
        assert_eq!(
            sink.found[0].to_string(),
            "p.yaml:2:7: error: the file is not UTF-8 text; save it as UTF-8"
        );
        let mut sink = Sink::new("p.yaml".into());
        let huge = vec![b'#'; (MAX_POLICY_BYTES + 1) as usize];
        assert!(parse(&huge, &mut sink).is_none());
        assert!(
            sink.found[0].message.contains("at most"),
            "{}",
            sink.found[0]
        );
    }
}
