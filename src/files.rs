//! Private places on disk: the data dir and the keys dir are directories only their owner can
//! enter (0700), owned by the user the vault runs as; files that hold secrets are regular files
//! (never symbolic links) owned by that user; a directory entry that must survive a crash is
//! made durable by syncing its parent.
//!
//! Depends on nothing else in the crate.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

/// The user id this process acts as (its effective uid).
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes files and directories this process creates private to its user (umask 077), so that
/// RocksDB's files, the audit log and token hashes are not readable by others. Process-wide:
/// called by `strongroom serve`, not by the library.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing one: it must be a
/// directory owned by this user; if group or others may enter it, it is tightened to 0700 and a
/// warning names the old mode. `what` names it in messages (`data dir`, `keys dir`).
///
/// Tightening rather than refusing: the directory is ours (owner checked) and was most likely
/// made by an earlier version with the umask's mode; refusing would only stop the vault. A key
/// *file* others could read is refused instead (see `crypto::FileKekProvider`): the key may
/// have leaked, and a chmod would hide that.
///
/// # Errors
/// A message for the operator naming `dir` and the problem.
pub fn private_dir(dir: &Path, what: &str) -> Result<(), String> {
    let shown = dir.display();
    let created = match fs::metadata(dir) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {what} {shown}: {e}"))?;
            true
        }
        Err(e) => return Err(format!("cannot read {what} {shown}: {e}")),
    };
    let meta = fs::metadata(dir).map_err(|e| format!("cannot read {what} {shown}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("{what} {shown} is not a directory"));
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(format!(
            "{what} {shown} is owned by uid {}, not by uid {me} that strongroom runs as: \
             run strongroom as its owner, or `chown` it",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // DirBuilder's mode is filtered by the umask, so even a directory just made may need it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!("{what} {shown} has mode {mode:04o} and cannot be made 0700: {e}")
        })?;
        if !created {
            tracing::warn!(
                dir = %shown,
                old_mode = %format_args!("{mode:04o}"),
                "{what} was open to group or others; tightened to 0700"
            );
        }
    }
    if created && let Some(parent) = parent_of(dir) {
        sync_dir(&parent)?;
    }
    Ok(())
}

/// Reads a file holding a secret (a private key): a regular file, not a symbolic link, owned by
/// this user, unreadable by group and others (0600 or stricter), at most `max` bytes. `what`
/// names it in messages (`tls_key_file`); its content never appears in them.
///
/// # Errors
/// A message naming `what`, the file and the problem.
pub fn read_secret(
    path: &Path,
    what: &str,
    max: u64,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display();
    // O_NOFOLLOW is a small positive flag on every Unix; the conversion cannot fail.
    let no_follow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow)
        .open(path)
        .map_err(|e| format!("{what}: cannot open {shown}: {e}"))?;
    // Checks are made on the opened file, so it cannot be swapped after them.
    let meta = file
        .metadata()
        .map_err(|e| format!("{what}: cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what}: {shown} is not a regular file"));
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(format!(
            "{what}: {shown} is owned by uid {}, not by uid {me} that strongroom runs as: \
             `chown` it to this user",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what}: {shown} has mode {mode:04o}: group or others can read it; run \
             `chmod 600 {shown}` and start again"
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "{what}: {shown} is {} bytes, more than {max}",
            meta.len()
        ));
    }
    // Room for all of it up front: a growing buffer would leave copies of the secret behind.
    let capacity = usize::try_from(meta.len()).unwrap_or(0) + 1;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(capacity));
    file.take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what}: cannot read {shown}: {e}"))?;
    Ok(bytes)
}

/// Opens `path` for writing a file that may hold personal data (an export, an extract): a new
/// file is created with mode 0600; an existing one must be a regular file and is made 0600
/// before it is truncated. Never through a symbolic link: O_NOFOLLOW makes a link in the last
/// component an error. With `fresh`, whatever is at `path` is removed first (a link itself,
/// never its target) and the file is created anew (O_EXCL), so no earlier inode is reused.
///
/// # Errors
/// A message naming the file and the problem.
pub fn create_private(path: &Path, fresh: bool) -> Result<fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display();
    if fresh {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove the stale {shown}: {e}")),
        }
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if fresh {
        options.create_new(true);
    } else {
        options.create(true);
    }
    let file = open_private(path, &mut options, "create")?;
    file.set_len(0)
        .map_err(|e| format!("cannot truncate {shown}: {e}"))?;
    Ok(file)
}

/// Opens an existing file of ours that may hold personal data, for writing more of it (a map
/// being resumed): never through a symbolic link, a regular file, made 0600, not truncated.
///
/// # Errors
/// A message naming the file and the problem.
pub fn reopen_private(path: &Path) -> Result<fs::File, String> {
    open_private(path, fs::OpenOptions::new().write(true), "open")
}

/// Opens `path` with `options`, never through a symbolic link (O_NOFOLLOW), then checks and
/// fixes the opened file itself, so that it cannot be swapped after the checks: a regular
/// file, mode 0600.
fn open_private(
    path: &Path,
    options: &mut fs::OpenOptions,
    verb: &str,
) -> Result<fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display();
    // O_NOFOLLOW is a small positive flag on every Unix; the conversion cannot fail.
    let no_follow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let file = options
        .custom_flags(no_follow)
        .open(path)
        .map_err(|e| format!("cannot {verb} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    // The mode given at creation is filtered by the umask, and an existing file keeps its own.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {shown} private (mode 0600): {e}"))?;
    Ok(file)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_owned()),
        None => None,
    }
}

/// Writes `bytes` whole to `path`: into a new file at `temporary` (0600, any leftover removed
/// first), synced, then renamed over `path`. A crash leaves the old `path` or the new one, never
/// part of it. The caller syncs the directory if the rename must survive a crash.
///
/// # Errors
/// The I/O error of the step that failed.
pub fn write_whole(temporary: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let _ = fs::remove_file(temporary);
    fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temporary)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(temporary, path))
}

/// Makes the entries of `dir` durable (fsync of the directory itself).
///
/// # Errors
/// A message naming `dir`.
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))
}

/// `path` made absolute against the current directory, with `.` and `..` resolved lexically
/// (nothing is read from disk, so it works for paths that do not exist yet).
///
/// # Errors
/// A message if the current directory cannot be read.
pub fn lexical_absolute(path: &Path) -> Result<PathBuf, String> {
    let absolute =
        std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(c),
        }
    }
    Ok(out)
}

/// Whether `inner` is `outer` or below it, comparing the real paths (symbolic links resolved)
/// where both exist, and the lexical absolute paths otherwise.
///
/// # Errors
/// A message if a path cannot be resolved.
pub fn is_within(inner: &Path, outer: &Path) -> Result<bool, String> {
    let lexical = lexical_absolute(inner)?.starts_with(lexical_absolute(outer)?);
    let real = match (fs::canonicalize(inner), fs::canonicalize(outer)) {
        (Ok(i), Ok(o)) => i.starts_with(o),
        (Err(_), _) | (_, Err(_)) => false,
    };
    Ok(lexical || real)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn creates_0700_and_tightens_an_open_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        private_dir(&dir, "test dir").unwrap();
        for d in [&tmp.path().join("a"), &dir] {
            let mode = fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir, "test dir").unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(
            private_dir(&file, "test dir")
                .unwrap_err()
                .contains("not a directory")
        );
    }

    #[test]
    fn a_secret_file_must_be_ours_private_and_regular() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("k");
        fs::write(&key, "secret-bytes").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&key, "tls_key_file", 100).unwrap_err();
        assert!(
            err.starts_with("tls_key_file:") && err.contains("0644"),
            "{err}"
        );
        assert!(!err.contains("secret-bytes"));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&read_secret(&key, "k", 100).unwrap()[..], b"secret-bytes");
        assert!(
            read_secret(&key, "k", 4)
                .unwrap_err()
                .contains("more than 4")
        );
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(read_secret(&link, "k", 100).is_err());
        assert!(read_secret(tmp.path(), "k", 100).is_err());
    }

    #[test]
    fn a_private_file_is_0600_fixed_if_it_existed_and_never_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        let new = tmp.path().join("new");
        create_private(&new, false).unwrap();
        assert_eq!(mode(&new), 0o600);
        let old = tmp.path().join("old");
        fs::write(&old, "earlier content").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&old, false).unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(fs::metadata(&old).unwrap().len(), 0);
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&old, true).unwrap();
        assert_eq!(mode(&old), 0o600);
        // A link is refused, and its target keeps its mode and content.
        let target = tmp.path().join("target");
        fs::write(&target, "theirs").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_private(&link, false).is_err());
        assert_eq!(mode(&target), 0o644);
        assert_eq!(fs::read_to_string(&target).unwrap(), "theirs");
        // Fresh: the link itself is removed and a new private file made in its place.
        create_private(&link, true).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(mode(&link), 0o600);
        assert_eq!(fs::read_to_string(&target).unwrap(), "theirs");
        assert!(create_private(tmp.path(), false).is_err());
    }

    #[test]
    fn within_is_lexical_and_real() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        assert!(is_within(&data.join("keys"), &data).unwrap());
        assert!(is_within(&data, &data).unwrap());
        assert!(is_within(&data.join("x/../../data/k"), &data).unwrap());
        assert!(!is_within(&tmp.path().join("keys"), &data).unwrap());
        fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&data, tmp.path().join("link")).unwrap();
        assert!(is_within(&tmp.path().join("link"), &data).unwrap());
    }
}
