//! The documentation's links hold: in `README.md` and every `docs/*.md`,
//! each relative link `[…](path)`, `[…](path#anchor)` or `[…](#anchor)`
//! names a file of the repository, and each anchor into a Markdown file
//! names one of its headings, slugged as GitHub slugs them. Links to other
//! sites (`http://`, `https://`, `mailto:`) and anything inside fenced code
//! blocks or inline code are not links here. The README stays a front door:
//! under 220 lines, with the depth in `docs/`.
//!
//! Needs no services: `cargo test --test docs`.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The README is the front door; past this it is telling you that a
/// section belongs in `docs/`.
const README_MAX_LINES: usize = 220;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every `docs/*.md`, sorted so failures read in order.
fn documents() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let docs = fs::read_dir(root.join("docs")).expect("docs/ is readable");
    let mut in_docs: Vec<PathBuf> = docs
        .map(|entry| entry.expect("docs/ lists its files").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    in_docs.sort();
    files.extend(in_docs);
    files
}

/// The lines outside fenced code blocks (```` ``` ```` or `~~~`), with
/// their line numbers from 1. A fence closes with the same character, at
/// least as many times; an indented fence (inside a list item) counts.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut prose = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ['`', '~'].into_iter().find_map(|c| {
            let run = trimmed.chars().take_while(|&x| x == c).count();
            (run >= 3).then_some((c, run))
        });
        match (fence, marker) {
            (None, Some(open)) => fence = Some(open),
            (Some((c, len)), Some((m, run))) if c == m && run >= len && trimmed[run..].trim().is_empty() => {
                fence = None
            }
            (None, None) => prose.push((index + 1, line)),
            _ => {}
        }
    }
    prose
}

/// The line with its inline code spans (`` `…` ``, any number of
/// backticks) blanked out: a link shown as code is not a link.
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let close = (i + run..chars.len()).find(|&j| {
            chars[j..].iter().take_while(|&&c| c == '`').count() == run && (j == 0 || chars[j - 1] != '`')
        });
        match close {
            Some(j) => {
                out.extend(std::iter::repeat_n(' ', j + run - i));
                i = j + run;
            }
            None => {
                // An unmatched backtick run is literal text.
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The destinations of the inline links and images on one line: what
/// stands between `](` and its closing `)`, without a `"title"`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    let mut seen = 0;
    while let Some(at) = rest.find("](") {
        let before = &line[..seen + at];
        let after = &rest[at + 2..];
        seen += at + 2;
        rest = after;
        if !before.contains('[') {
            continue;
        }
        let mut depth = 0usize;
        let end = after.char_indices().find(|&(_, c)| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' if depth == 0 => true,
            ')' => {
                depth -= 1;
                false
            }
            _ => false,
        });
        let Some((end, _)) = end else { continue };
        let destination = after[..end].trim();
        let destination = destination.split_whitespace().next().unwrap_or("");
        let destination = destination.trim_start_matches('<').trim_end_matches('>');
        targets.push(destination.to_string());
    }
    targets
}

/// A heading's text as GitHub shows it: link syntax reduced to its label.
fn rendered(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    out.push_str(rest);
    out
}

/// GitHub's slug for a heading: lowercase; every character that is not a
/// letter, a digit, `-`, `_` or a space dropped; each space a `-`.
fn slug(heading: &str) -> String {
    rendered(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file's headings make, in order: a repeated slug
/// gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let line = line.trim_start_matches(' ');
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if indent > 3 || !(1..=6).contains(&hashes) {
            continue;
        }
        let text = &line[hashes..];
        if !(text.is_empty() || text.starts_with(' ') || text.starts_with('\t')) {
            continue;
        }
        let text = text.trim().trim_end_matches('#').trim_end();
        let base = slug(text);
        let seen = count.entry(base.clone()).or_insert(0);
        out.push(if *seen == 0 {
            base.clone()
        } else {
            format!("{base}-{seen}")
        });
        *seen += 1;
    }
    out
}

/// `path` without `.` and `..`, relative to `root` when inside it: the
/// name a reader looks for.
fn tidy(path: &Path, root: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.strip_prefix(root).map(Path::to_path_buf).unwrap_or(out)
}

/// What is wrong with one link from `file`, if anything.
fn check(file: &Path, target: &str, cache: &mut HashMap<PathBuf, Vec<String>>) -> Option<String> {
    let lower = target.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:") {
        return None;
    }
    if target.is_empty() {
        return Some("an empty link".to_string());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let dest = if path.is_empty() {
        file.to_path_buf()
    } else {
        file.parent().expect("a document is in a folder").join(path)
    };
    let root = repo().canonicalize().expect("the repository has a path");
    let Ok(dest) = dest.canonicalize() else {
        return Some(format!("no file {}", tidy(&dest, &repo()).display()));
    };
    if !dest.starts_with(&root) {
        return Some(format!("{} is outside the repository", dest.display()));
    }
    let anchor = anchor?;
    if dest.extension().is_none_or(|ext| ext != "md") {
        return None;
    }
    let known = cache.entry(dest.clone()).or_insert_with(|| {
        let text = fs::read_to_string(&dest).expect("a linked Markdown file is readable");
        anchors(&text)
    });
    if known.iter().any(|a| a == anchor) {
        return None;
    }
    let relative = dest.strip_prefix(&root).unwrap_or(&dest);
    Some(format!(
        "no heading in {} has the anchor #{anchor} (its anchors: {})",
        relative.display(),
        known.join(", ")
    ))
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut cache = HashMap::new();
    let mut broken = Vec::new();
    let mut links = 0;
    for file in documents() {
        let text = fs::read_to_string(&file).expect("a document is readable");
        let name = file.strip_prefix(repo()).unwrap_or(&file).display().to_string();
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                links += 1;
                if let Some(missing) = check(&file, &target, &mut cache) {
                    broken.push(format!("{name}:{number}: ({target}): {missing}"));
                }
            }
        }
    }
    assert!(links > 0, "no links found: is the link parser broken?");
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_readme_stays_a_front_door() {
    let text = fs::read_to_string(repo().join("README.md")).expect("README.md is readable");
    let lines = text.lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines, {README_MAX_LINES} or more: move the depth into docs/ and link it"
    );
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(
        slug("When the broker's log is new"),
        "when-the-brokers-log-is-new"
    );
    assert_eq!(
        slug("Security (all off by default)"),
        "security-all-off-by-default"
    );
    assert_eq!(
        slug("Who may embed: `ALLOWED_ORIGINS`"),
        "who-may-embed-allowed_origins"
    );
    assert_eq!(slug("Fan-out"), "fan-out");
    assert_eq!(slug("A — B"), "a--b");
    assert_eq!(slug("See [the docs](docs/x.md)"), "see-the-docs");
    let text = "# Top\n## Tests\n```\n## Not a heading\n```\n### Tests\n#hashtag\n## Tests ##\n";
    assert_eq!(anchors(text), ["top", "tests", "tests-1", "tests-2"]);
}

#[test]
fn links_in_code_and_to_other_sites_are_not_checked() {
    let line = "see [a](a.md#x), `[b](b.md)`, ![c](c.png \"title\") and [d](https://example.com)";
    assert_eq!(link_targets(line), ["a.md#x", "c.png", "https://example.com"]);
    assert_eq!(prose_lines("x\n  ```sh\n[y](y.md)\n  ```\nz").len(), 2);
}
