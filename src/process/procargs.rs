//! The layout of macOS's `KERN_PROCARGS2` buffer, parsed without any macOS
//! call so the rules are tested on every platform.
//!
//! The kernel hands back: `argc` as a native-endian `i32`, the executable
//! path, NUL padding, then `argc` NUL-terminated arguments, then the
//! environment as NUL-terminated `KEY=VALUE` strings, ending at an empty
//! string or the end of the buffer.

/// The environment strings of a `KERN_PROCARGS2` buffer, or `None` when the
/// buffer is too short to hold what it claims (a truncated or foreign buffer
/// proves nothing, so it is not read as an empty environment).
pub fn environment(buf: &[u8]) -> Option<Vec<&[u8]>> {
    let (argc, strings) = strings(buf)?;
    let env = strings.get(argc..)?;
    Some(env.iter().copied().take_while(|s| !s.is_empty()).collect())
}

/// The arguments (`argv`, the program name first) of a `KERN_PROCARGS2`
/// buffer, or `None` when it holds fewer than it claims.
pub fn arguments(buf: &[u8]) -> Option<Vec<&[u8]>> {
    let (argc, strings) = strings(buf)?;
    strings.get(..argc).map(<[&[u8]]>::to_vec)
}

/// `argc` and the NUL-separated strings after the executable path and its
/// padding.
fn strings(buf: &[u8]) -> Option<(usize, Vec<&[u8]>)> {
    let argc = i32::from_ne_bytes(buf.get(..4)?.try_into().ok()?);
    let argc = usize::try_from(argc).ok()?;
    let mut rest = &buf[4..];
    // The executable path, then the padding that aligns what follows.
    let end = rest.iter().position(|&b| b == 0)?;
    rest = &rest[end..];
    let start = rest.iter().position(|&b| b != 0)?;
    rest = &rest[start..];
    Some((argc, rest.split(|&b| b == 0).collect()))
}

/// The environment of a `KERN_PROCARGS2` buffer as one NUL-separated block,
/// the layout of Linux's `/proc/<pid>/environ`, so the same readers
/// (markers, `tree::environ_names`) serve both systems.
pub fn environ_block(buf: &[u8]) -> Option<Vec<u8>> {
    Some(
        environment(buf)?
            .into_iter()
            .flat_map(|var| var.iter().copied().chain([0]))
            .collect(),
    )
}

/// The value of `name` in a `KERN_PROCARGS2` buffer's environment.
pub fn env_var<'a>(buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    environment(buf)?
        .into_iter()
        .find_map(|var| var.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(argc: i32, exe: &str, pad: usize, args: &[&str], env: &[&str]) -> Vec<u8> {
        let mut buf = argc.to_ne_bytes().to_vec();
        buf.extend_from_slice(exe.as_bytes());
        buf.extend(std::iter::repeat_n(0, 1 + pad));
        for s in args.iter().chain(env) {
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
        }
        buf
    }

    #[test]
    fn environment_follows_the_arguments() {
        let buf = buffer(
            2,
            "/bin/sleep",
            3,
            &["sleep", "PSM_ROOT=/not/env"],
            &["PSM_ROOT=/r", "PSM_SERVICE=web"],
        );
        assert_eq!(
            environment(&buf).unwrap(),
            vec![b"PSM_ROOT=/r".as_slice(), b"PSM_SERVICE=web".as_slice()]
        );
        assert_eq!(env_var(&buf, "PSM_SERVICE"), Some(b"web".as_slice()));
        assert_eq!(env_var(&buf, "PSM_ROOT"), Some(b"/r".as_slice()));
        assert_eq!(env_var(&buf, "PSM"), None, "a prefix is not a name");
        assert_eq!(
            arguments(&buf).unwrap(),
            vec![b"sleep".as_slice(), b"PSM_ROOT=/not/env".as_slice()]
        );
        assert_eq!(
            environ_block(&buf).unwrap(),
            b"PSM_ROOT=/r\0PSM_SERVICE=web\0".to_vec()
        );
        let marker = super::super::Marker::service(std::path::Path::new("/r"), "web");
        assert!(marker.matches(&environ_block(&buf).unwrap()));
    }

    #[test]
    fn an_empty_string_ends_the_environment() {
        let mut buf = buffer(1, "/bin/sh", 0, &["sh"], &["A=1"]);
        buf.extend_from_slice(b"\0B=2\0");
        assert_eq!(environment(&buf).unwrap(), vec![b"A=1".as_slice()]);
    }

    #[test]
    fn truncated_or_foreign_buffers_prove_nothing() {
        assert_eq!(environment(b""), None);
        assert_eq!(environment(&[1, 0, 0]), None);
        assert_eq!(environment(&(-1i32).to_ne_bytes()), None);
        // Claims three arguments but holds one.
        assert_eq!(environment(&buffer(3, "/x", 0, &["x"], &[])), None);
        assert_eq!(environ_block(b""), None);
        assert_eq!(arguments(&buffer(3, "/x", 0, &["x"], &[])), None);
    }

    #[test]
    fn no_environment_is_an_empty_one() {
        let buf = buffer(1, "/bin/true", 0, &["true"], &[]);
        assert_eq!(environment(&buf).unwrap(), Vec::<&[u8]>::new());
    }
}
