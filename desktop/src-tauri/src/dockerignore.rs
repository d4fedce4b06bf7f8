//! `.dockerignore`: which files of a build's folder stay out of the context sent to the
//! engine, with the docker CLI's rules (moby's `patternmatcher`): one pattern a line, `#`
//! comments, `!` re-includes; a pattern is cleaned like a path and matched against the
//! whole path relative to the folder (`/` separators), where `*` and `?` stay within one
//! path element, `**` spans any number of them and `[…]` is a class; a pattern that
//! matches a folder matches everything in it; the last pattern that matches decides.

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`: one character but `/`.
    One,
    /// `*`: any characters but `/`.
    Star,
    /// `**`: any characters.
    AnyPath,
    /// `**/` at the start or after `/`: nothing, or any path that ends with `/`.
    AnyDirs,
    /// `/**` at the end: nothing, or `/` and anything.
    AnyBelow,
    /// `[…]`: ranges, negated with `^` or `!`.
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
}

/// A `.dockerignore` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern as cleaned (for messages and tests).
    pub text: String,
    /// A `!` pattern: it includes again what earlier ones excluded.
    pub exclusion: bool,
    tokens: Vec<Token>,
}

/// Cleans a path as Go's `filepath.Clean` does, with `/` separators, and drops a leading
/// `/` (patterns are relative to the context's root).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !path.starts_with('/') {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn tokenize(p: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                // A run of more stars means the same as two.
                let mut j = i + 2;
                while chars.get(j) == Some(&'*') {
                    j += 1;
                }
                let at_start = i == 0 || chars[i - 1] == '/';
                if at_start && chars.get(j) == Some(&'/') {
                    out.push(Token::AnyDirs);
                    i = j + 1;
                } else if j == chars.len() && i > 0 && chars[i - 1] == '/' {
                    // `a/**`: the `/` before is part of the token.
                    out.pop();
                    out.push(Token::AnyBelow);
                    i = j;
                } else {
                    out.push(Token::AnyPath);
                    i = j;
                }
            }
            '*' => {
                out.push(Token::Star);
                i += 1;
            }
            '?' => {
                out.push(Token::One);
                i += 1;
            }
            '\\' => {
                let c = chars
                    .get(i + 1)
                    .ok_or_else(|| "it ends with a lone \\".to_string())?;
                out.push(Token::Char(*c));
                i += 2;
            }
            '[' => {
                let mut j = i + 1;
                let negated = matches!(chars.get(j), Some('^' | '!'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = chars.get(j) else {
                        return Err("a [ is not closed by ]".into());
                    };
                    if c == ']' && !first {
                        j += 1;
                        break;
                    }
                    first = false;
                    let c = if c == '\\' {
                        j += 1;
                        *chars.get(j).ok_or("a [ is not closed by ]")?
                    } else {
                        c
                    };
                    if chars.get(j + 1) == Some(&'-') && chars.get(j + 2).is_some_and(|&e| e != ']')
                    {
                        ranges.push((c, chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((c, c));
                        j += 1;
                    }
                }
                out.push(Token::Class { ranges, negated });
                i = j;
            }
            c => {
                out.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Whether `tokens` match all of `text`.
fn matches(tokens: &[Token], text: &[char]) -> bool {
    // Memoised failures: (token index, text index) pairs already known not to match.
    let mut failed = std::collections::HashSet::new();
    match_at(tokens, text, 0, 0, &mut failed)
}

fn match_at(
    tokens: &[Token],
    text: &[char],
    ti: usize,
    si: usize,
    failed: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if failed.contains(&(ti, si)) {
        return false;
    }
    let ok = match tokens.get(ti) {
        None => si == text.len(),
        Some(Token::Char(c)) => {
            text.get(si) == Some(c) && match_at(tokens, text, ti + 1, si + 1, failed)
        }
        Some(Token::One) => {
            text.get(si).is_some_and(|&c| c != '/')
                && match_at(tokens, text, ti + 1, si + 1, failed)
        }
        Some(Token::Class { ranges, negated }) => {
            text.get(si).is_some_and(|&c| {
                c != '/' && ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated
            }) && match_at(tokens, text, ti + 1, si + 1, failed)
        }
        Some(Token::Star) => {
            let mut end = si;
            loop {
                if match_at(tokens, text, ti + 1, end, failed) {
                    break true;
                }
                if end >= text.len() || text[end] == '/' {
                    break false;
                }
                end += 1;
            }
        }
        Some(Token::AnyPath) => {
            (si..=text.len()).any(|end| match_at(tokens, text, ti + 1, end, failed))
        }
        Some(Token::AnyDirs) => {
            match_at(tokens, text, ti + 1, si, failed)
                || (si..text.len())
                    .filter(|&i| text[i] == '/')
                    .any(|i| match_at(tokens, text, ti + 1, i + 1, failed))
        }
        Some(Token::AnyBelow) => {
            si == text.len() || (text.get(si) == Some(&'/') && ti + 1 == tokens.len())
        }
    };
    if !ok {
        failed.insert((ti, si));
    }
    ok
}

impl Pattern {
    /// One line of a `.dockerignore` (without its `!`); `None` for a pattern that cleans to
    /// nothing.
    pub fn new(line: &str, exclusion: bool) -> Result<Option<Pattern>, String> {
        let text = clean(line);
        if text == "." {
            return Ok(None);
        }
        let tokens = tokenize(&text).map_err(|why| format!("pattern \"{line}\": {why}"))?;
        Ok(Some(Pattern {
            text,
            exclusion,
            tokens,
        }))
    }

    /// Whether the pattern matches `path` (relative, `/` separators) or a folder above it.
    pub fn matches(&self, path: &str) -> bool {
        let chars: Vec<char> = path.chars().collect();
        if matches(&self.tokens, &chars) {
            return true;
        }
        chars
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == '/')
            .any(|(i, _)| matches(&self.tokens, &chars[..i]))
    }
}

/// The patterns of a `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    pub patterns: Vec<Pattern>,
}

impl Ignore {
    /// Parses a `.dockerignore`; a bad line is named by its number.
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (line, exclusion) = match line.strip_prefix('!') {
                Some(rest) => (rest.trim(), true),
                None => (line, false),
            };
            if line.is_empty() {
                continue;
            }
            match Pattern::new(line, exclusion) {
                Ok(Some(p)) => patterns.push(p),
                Ok(None) => {}
                Err(why) => return Err(format!(".dockerignore line {}: {why}", n + 1)),
            }
        }
        Ok(Ignore { patterns })
    }

    /// Whether `path` (relative to the context, `/` separators) stays out.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for p in &self.patterns {
            if p.exclusion == excluded && p.matches(path) {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// Whether some `!` pattern could include again a file below an excluded folder (then
    /// the folder is walked, else it is skipped whole).
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> Ignore {
        Ignore::parse(text).unwrap()
    }

    #[test]
    fn test_patterns_are_cleaned_like_paths() {
        assert_eq!(clean("/secret"), "secret");
        assert_eq!(clean("./a//b/"), "a/b");
        assert_eq!(clean("a/../b"), "b");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("."), ".");
        let i = ignore("# comment\n\n  /target  \n!./target/keep\n.\n");
        assert_eq!(
            i.patterns
                .iter()
                .map(|p| (p.text.as_str(), p.exclusion))
                .collect::<Vec<_>>(),
            [("target", false), ("target/keep", true)]
        );
    }

    #[test]
    fn test_star_stays_within_one_path_element() {
        let i = ignore("*.md\ntemp?\n[a-c].txt\n[!x]y");
        assert!(i.excludes("README.md"));
        assert!(!i.excludes("docs/README.md"));
        assert!(i.excludes("temp1"));
        assert!(!i.excludes("temp12"));
        assert!(i.excludes("b.txt"));
        assert!(!i.excludes("d.txt"));
        assert!(i.excludes("ay"));
        assert!(!i.excludes("xy"));
    }

    #[test]
    fn test_double_star_spans_folders() {
        let i = ignore("**/*.log");
        assert!(i.excludes("a.log"));
        assert!(i.excludes("x/y/a.log"));
        assert!(!i.excludes("a.log.txt"));
        let i = ignore("build/**");
        assert!(i.excludes("build"));
        assert!(i.excludes("build/x/y"));
        assert!(!i.excludes("builder"));
        let i = ignore("a/**/b");
        assert!(i.excludes("a/b"));
        assert!(i.excludes("a/x/y/b"));
        assert!(!i.excludes("a/xb"));
        assert!(ignore("**").excludes("anything/at/all"));
    }

    #[test]
    fn test_a_folder_pattern_covers_its_contents() {
        let i = ignore("node_modules\n.git");
        assert!(i.excludes("node_modules"));
        assert!(i.excludes("node_modules/x/index.js"));
        assert!(i.excludes(".git/HEAD"));
        assert!(!i.excludes("src/node_modules_list.txt"));
        assert!(!i.has_exclusions());
    }

    #[test]
    fn test_the_last_matching_pattern_decides() {
        let i = ignore("*.md\n!README.md\nREADME*.md");
        assert!(i.excludes("CHANGES.md"));
        assert!(
            i.excludes("README.md"),
            "the last pattern excludes it again"
        );
        let i = ignore("docs\n!docs/keep.txt");
        assert!(i.excludes("docs/other.txt"));
        assert!(!i.excludes("docs/keep.txt"));
        assert!(i.has_exclusions());
    }

    #[test]
    fn test_escapes_and_bad_patterns() {
        assert!(ignore("a\\*b").excludes("a*b"));
        assert!(!ignore("a\\*b").excludes("axb"));
        let err = Ignore::parse("ok\n[abc").unwrap_err();
        assert!(err.contains(".dockerignore line 2"), "{err}");
        assert!(err.contains("not closed"), "{err}");
    }
}
