//! What may be a name in the mount.
//!
//! Providers can return names no POSIX filesystem can hold (`/` inside a B2 segment, NUL,
//! `.`/`..`, over 255 bytes). The core skips those entries with a warning instead of passing
//! them to the kernel, which would reject the whole directory reply or, worse, resolve `..`.
//!
//! Everything else the kernel accepts is shown unchanged, never escaped: control bytes (`ls`
//! escapes them itself, `find -print0` passes them through), leading dots, spaces. Names that
//! are not valid UTF-8 (an autoindex href decoding to `%FF`) are skipped with a warning by the
//! source that decodes them; duplicates are skipped by the core (the first one wins).

/// Longest name the kernel accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Why `name` cannot be a directory entry, or `Ok` if it can.
pub fn check(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name == "." || name == ".." {
        return Err("is . or ..");
    }
    if name.len() > NAME_MAX {
        return Err("is longer than 255 bytes");
    }
    if name.contains('/') {
        return Err("contains '/'");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    Ok(())
}

/// The rule for `[[source]] name`: a valid name that does not start with a dot.
pub fn check_source_name(name: &str) -> Result<(), &'static str> {
    check(name)?;
    if name.starts_with('.') {
        return Err("must not start with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "..a", "a b", "ünï", &"x".repeat(255), "\u{7}bell"] {
            assert!(check(good).is_ok(), "{good:?}");
        }
    }
}
