//! Parsing HTML directory listings ("autoindex") as nginx, Apache, lighttpd and Python's
//! `http.server` produce them.
//!
//! The parser is deliberately forgiving about markup (html5ever's tokenizer, so malformed,
//! nested or truncated pages still parse) and strict about what counts as an entry: only links
//! that resolve to a direct child of the listed directory. Parent links (`../`), sort links
//! (`?C=N;O=D`), fragments, absolute links elsewhere and links to other hosts are ignored.
//!
//! Sizes: nginx with `autoindex_exact_size on` (its default) prints exact byte counts after each
//! link; those are used as-is. Apache and lighttpd print rounded sizes (`1.2K`) and Python none:
//! such entries come back with `size: None` and the HTTP source asks the server (HEAD).

use std::time::SystemTime;

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::{BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer};
use url::Url;

/// Text kept after each link (nginx's date and size fit in well under this).
const MAX_TRAILER: usize = 256;

/// Collects `(href, text right after </a>)` from the token stream. No tree is built: memory
/// stays proportional to the links, not to the page (a DOM costs ~12× the page's size).
#[derive(Default)]
struct Anchors {
    links: RefCell<Vec<(String, String)>>,
    /// Inside an `<a href>`.
    open: RefCell<bool>,
    /// Between its `</a>` and the next tag: the text goes to the last link's trailer.
    trailing: RefCell<bool>,
}

impl TokenSink for Anchors {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) => {
                *self.trailing.borrow_mut() = false;
                if &*tag.name == "a" {
                    match tag.kind {
                        TagKind::StartTag => {
                            let href = tag.attrs.iter().find(|a| &*a.name.local == "href");
                            *self.open.borrow_mut() = href.is_some();
                            if let Some(h) = href {
                                self.links.borrow_mut().push((h.value.to_string(), String::new()));
                            }
                        }
                        TagKind::EndTag => {
                            let was_open = std::mem::take(&mut *self.open.borrow_mut());
                            *self.trailing.borrow_mut() = was_open;
                        }
                    }
                }
            }
            Token::CharacterTokens(t) if *self.trailing.borrow() => {
                if let Some((_, trailer)) = self.links.borrow_mut().last_mut()
                    && trailer.len() < MAX_TRAILER
                {
                    let room = MAX_TRAILER - trailer.len();
                    let mut end = room.min(t.len());
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    trailer.push_str(&t[..end]);
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

/// Every `<a href>` of `html` with the text that follows its `</a>`.
fn anchors(html: &str) -> Vec<(String, String)> {
    let tok = Tokenizer::new(Anchors::default(), Default::default());
    let input = BufferQueue::default();
    // Fed in pieces so the tokenizer never holds a second copy of a big page.
    let mut rest = html;
    while !rest.is_empty() {
        let mut end = rest.len().min(64 << 10);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        input.push_back(StrTendril::from_slice(&rest[..end]));
        rest = &rest[end..];
        // The sink never asks to pause for a script, so one feed consumes the queue.
        let _ = tok.feed(&input);
    }
    tok.end();
    tok.sink.links.take()
}

/// One link of a listing that names a direct child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Decoded name (one path segment).
    pub name: String,
    pub is_dir: bool,
    /// Absolute URL of the child (directories end in `/`).
    pub url: Url,
    /// Exact size in bytes when the page states one.
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
}

/// What the parser refused, for the warning the source logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub href: String,
    pub why: &'static str,
}

/// Parses `html`, the listing of directory `base` (which must end in `/`).
pub fn parse(html: &str, base: &Url) -> (Vec<Link>, Vec<Skipped>) {
    let mut links: Vec<Link> = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (href, trailer) in anchors(html) {
        let href = href.trim();
        match child_of(base, href) {
            Err(why) => {
                if why != "not a child" {
                    skipped.push(Skipped {
                        href: href.chars().take(200).collect(),
                        why,
                    });
                }
            }
            Ok((name, is_dir, url)) => {
                if let Err(why) = crate::fs::name::check(&name) {
                    skipped.push(Skipped {
                        href: href.chars().take(200).collect(),
                        why,
                    });
                    continue;
                }
                if !seen.insert(name.clone()) {
                    continue;
                }
                let (size, mtime) = if is_dir {
                    (None, parse_nginx_trailer(&trailer).1)
                } else {
                    parse_nginx_trailer(&trailer)
                };
                links.push(Link {
                    name,
                    is_dir,
                    url,
                    size,
                    mtime,
                });
            }
        }
    }
    (links, skipped)
}

/// Resolves `href` against `base` and returns (decoded name, is_dir, url) when it names a
/// direct child of `base`.
fn child_of(base: &Url, href: &str) -> Result<(String, bool, Url), &'static str> {
    if href.is_empty() || href.starts_with('#') || href.starts_with('?') {
        return Err("not a child");
    }
    let url = base.join(href).map_err(|_| "bad URL")?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err("not a child");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("not a child");
    }
    let rest = url.path().strip_prefix(base.path()).ok_or("not a child")?;
    let (seg, is_dir) = match rest.strip_suffix('/') {
        Some(s) => (s, true),
        None => (rest, false),
    };
    if seg.is_empty() || seg.contains('/') {
        return Err("not a child");
    }
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
    let name = String::from_utf8(bytes).map_err(|_| "name is not valid UTF-8")?;
    Ok((name, is_dir, url))
}

/// nginx prints `  21-Nov-2026 22:00    12345` after each link (`-` for directories, or a
/// rounded `12K` when exact sizes are off). Returns (exact size, mtime).
fn parse_nginx_trailer(t: &str) -> (Option<u64>, Option<SystemTime>) {
    let line = t.lines().next().unwrap_or("");
    let toks: Vec<&str> = line.split_whitespace().collect();
    if toks.len() < 3 {
        return (None, None);
    }
    let mtime = parse_nginx_date(toks[0], toks[1]);
    let size = toks[2].parse::<u64>().ok().filter(|_| mtime.is_some());
    (size, mtime)
}

fn parse_nginx_date(day: &str, time: &str) -> Option<SystemTime> {
    // 21-Nov-2026 22:00 (UTC, as nginx prints with autoindex_localtime off).
    let mut p = day.split('-');
    let (d, m, y) = (p.next()?, p.next()?, p.next()?);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|x| *x == m)?;
    let (hh, mm) = time.split_once(':')?;
    let text = format!(
        "{:02} {} {} {:02}:{:02}:00 GMT",
        d.parse::<u32>().ok()?,
        [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
        ][month],
        y.parse::<u32>().ok()?,
        hh.parse::<u32>().ok()?,
        mm.parse::<u32>().ok()?
    );
    httpdate::parse_http_date(&format!("Mon, {text}")).ok().or_else(|| {
        // parse_http_date checks the weekday; try all seven.
        ["Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            .iter()
            .find_map(|w| httpdate::parse_http_date(&format!("{w}, {text}")).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:8080/data/").unwrap()
    }

    #[test]
    fn nginx_listing_with_exact_sizes() {
        let html = r#"<html><head><title>Index of /data/</title></head><body><h1>Index of /data/</h1><hr><pre><a href="../">../</a>
<a href="sub/">sub/</a>                                               21-Nov-2026 22:00                   -
<a href="big.bin">big.bin</a>                                            21-Nov-2026 22:01          1073741824
<a href="a%20b%25.txt">a b%.txt</a>                                         21-Nov-2026 22:02                  12
</pre><hr></body></html>"#;
        let (links, skipped) = parse(html, &base());
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(links.len(), 3);
        assert_eq!((links[0].name.as_str(), links[0].is_dir), ("sub", true));
        assert_eq!(links[1].size, Some(1073741824));
        assert!(links[1].mtime.is_some());
        assert_eq!(links[2].name, "a b%.txt");
        assert_eq!(links[2].size, Some(12));
    }

    #[test]
    fn apache_listing_ignores_sort_and_parent_links_and_rounded_sizes() {
        let html = r#"<table><tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>
<tr><td><a href="/">Parent Directory</a></td></tr>
<tr><td><a href="file1.txt">file1.txt</a></td><td align="right">2026-11-21 22:00  </td><td align="right">1.2K</td></tr>
<tr><td><a href="docs/">docs/</a></td></tr></table>"#;
        let (links, _) = parse(html, &base());
        let names: Vec<_> = links.iter().map(|l| (l.name.as_str(), l.is_dir, l.size)).collect();
        assert_eq!(names, vec![("file1.txt", false, None), ("docs", true, None)]);
    }

    #[test]
    fn python_http_server_listing() {
        let html = r#"<!DOCTYPE HTML><html><body><h1>Directory listing for /data/</h1><hr><ul>
<li><a href="x.bin">x.bin</a></li><li><a href="d%C3%A9j%C3%A0/">déjà/</a></li></ul></body></html>"#;
        let (links, _) = parse(html, &base());
        assert_eq!(links.len(), 2);
        assert_eq!(links[1].name, "déjà");
        assert!(links[1].is_dir);
    }

    #[test]
    fn links_outside_the_directory_are_ignored() {
        let html = r##"<a href="http://other.example/x">x</a><a href="/elsewhere/y">y</a><a href="sub/deeper/z">z</a>
<a href="https://127.0.0.1:8080/data/tls">tls</a><a href="#frag">f</a><a href="./">.</a><a href="ok">ok</a>"##;
        let (links, _) = parse(html, &base());
        let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["ok"]);
    }

    #[test]
    fn hostile_names_are_skipped_with_a_reason() {
        let long = "n".repeat(300);
        let html = format!(
            r#"<a href="a%2Fb">slash</a><a href="nul%00">nul</a><a href="{long}">long</a><a href="bad%FF">bad</a><a href="..%2F">dots</a><a href="good">g</a><a href="good">dup</a>"#
        );
        let (links, skipped) = parse(&html, &base());
        let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["good"]);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
    }

    #[test]
    fn encoded_dot_segments_and_same_named_file_and_directory() {
        // `%2E%2E/` is `..` to a URL parser (the parent: not a child), `..%2F..%2Fx` is one
        // segment whose decoded name holds '/': skipped. A file and a directory with one name:
        // the first wins.
        let html = r#"<a href="%2E%2E/">up</a><a href="%2e/">self</a><a href="..%2F..%2Fetc">t</a>
<a href="same">f</a><a href="same/">d</a><a href="ctl%01%1B">c</a>"#;
        let (links, skipped) = parse(html, &base());
        let got: Vec<_> = links.iter().map(|l| (l.name.as_str(), l.is_dir)).collect();
        assert_eq!(got, vec![("same", false), ("ctl\u{1}\u{1b}", false)]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].why, "contains '/'");
    }

    #[test]
    fn malformed_html_does_not_panic() {
        for html in [
            "<a href=",
            "<pre><a href=\"x\">x</a",
            "\0\0<a",
            "<a href=\"%\">",
            &"<div>".repeat(10000),
        ] {
            let _ = parse(html, &base());
        }
    }
}
