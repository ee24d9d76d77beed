//! Output files that appear complete or not at all, and output folders that disappear again
//! when the command that made them fails.
//!
//! On Linux an output is first an anonymous file (`O_TMPFILE`) in its destination folder, linked
//! into place (`linkat`) only when it is complete: a process killed at any point, even by
//! SIGKILL, leaves nothing behind. Where the file system lacks `O_TMPFILE`, the output is a
//! hidden `.<name>.partial-<pid>-<n>` file renamed into place at the end; such files are removed
//! when the [`OutputFile`] is dropped, by [`remove_partials`] (which the command line calls on
//! SIGINT/SIGTERM), and swept by the next run that writes into the same folder once their
//! process is gone.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Marker between an output's name and the owning process id in a partial file's name.
const PARTIAL_MARK: &str = ".partial-";

/// Forces the named-partial-file path even where `O_TMPFILE` works (tests of that path).
pub const ENV_NO_TMPFILE: &str = "BNN_CONVERT_NO_TMPFILE";

/// Partial files of this process that exist now.
static PARTIALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Folders this process created for outputs that are not yet kept, deepest last.
static CREATED_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Folders already swept of stale partial files by this process.
static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
/// Numbers partial files of one process apart.
static NEXT_PARTIAL: AtomicU64 = AtomicU64::new(0);
/// Set once `O_TMPFILE` was refused in some folder: later outputs go straight to named files.
static NO_TMPFILE: AtomicBool = AtomicBool::new(false);

/// A registry lock that still works after a panic elsewhere (the lists stay consistent: every
/// change is one push or one retain).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The folder a path's file lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An output file being written; nobody sees it at its destination until [`OutputFile::commit`].
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    dest: PathBuf,
    /// The hidden name it has until committed, where it is not anonymous.
    partial: Option<PathBuf>,
}

impl OutputFile {
    /// Starts an output that will appear at `dest`, whose folder must exist. The file gets the
    /// permissions of an ordinary new file (0644), not a temporary file's 0600.
    pub fn create(dest: &Path) -> Result<OutputFile> {
        let dir = parent_dir(dest);
        sweep_stale_partials(dir);
        if let Some(file) = anonymous_file(dir).map_err(|e| Error::io(dest, e))? {
            return Ok(OutputFile { file, dest: dest.to_path_buf(), partial: None });
        }
        OutputFile::create_named(dest)
    }

    /// An output under a hidden partial name, renamed into place by `commit`.
    fn create_named(dest: &Path) -> Result<OutputFile> {
        let partial = partial_name(dest);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o644);
        }
        let file = options.open(&partial).map_err(|e| Error::io(dest, e))?;
        lock(&PARTIALS).push(partial.clone());
        let out = OutputFile { file, dest: dest.to_path_buf(), partial: Some(partial) };
        out.set_output_permissions()?;
        Ok(out)
    }

    fn set_output_permissions(&self) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.file.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(&self.dest, e))?;
        }
        Ok(())
    }

    /// Where the file will appear.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, to write.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Allocates the first `len` bytes of the file (`fallocate`, which also sets its length), so
    /// that a disk without room for the whole output fails here, naming it, before anything is
    /// written; a file system that cannot allocate ahead is left to fail at the write.
    pub fn allocate(&self, len: u64) -> Result<()> {
        #[cfg(target_os = "linux")]
        if len > 0 {
            use std::os::unix::io::AsRawFd;
            let len = i64::try_from(len).map_err(|_| Error::invalid(&self.dest, format!("{len} bytes is too large for a file")))?;
            // SAFETY: a plain system call on a descriptor this struct owns.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len) } != 0 {
                let err = std::io::Error::last_os_error();
                if !matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
                    return Err(Error::io(&self.dest, err));
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = len;
        Ok(())
    }

    /// Makes the file visible at its destination, replacing what was there in one step.
    pub fn commit(mut self) -> Result<()> {
        let dest = self.dest.clone();
        self.file.flush().map_err(|e| Error::io(&dest, e))?;
        match self.partial.take() {
            Some(partial) => {
                let renamed = std::fs::rename(&partial, &dest);
                forget_partial(&partial);
                if let Err(e) = renamed {
                    let _ = std::fs::remove_file(&partial);
                    return Err(Error::io(&dest, e));
                }
                Ok(())
            }
            None => link_anonymous(&self.file, &dest).map_err(|e| Error::io(&dest, e)),
        }
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(partial) = self.partial.take() {
            let _ = std::fs::remove_file(&partial);
            forget_partial(&partial);
        }
    }
}

fn forget_partial(partial: &Path) {
    lock(&PARTIALS).retain(|p| p != partial);
}

/// `.<name>.partial-<pid>-<n>` beside `dest`.
fn partial_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = NEXT_PARTIAL.fetch_add(1, Ordering::Relaxed);
    parent_dir(dest).join(format!(".{name}{PARTIAL_MARK}{}-{n}", std::process::id()))
}

/// An unnamed file in `dir`, or `None` where the file system cannot make one.
#[cfg(target_os = "linux")]
fn anonymous_file(dir: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if NO_TMPFILE.load(Ordering::Relaxed) || std::env::var_os(ENV_NO_TMPFILE).is_some() {
        return Ok(None);
    }
    let opened = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).mode(0o644).open(dir);
    match opened {
        Ok(file) => {
            // Past the umask, like the files TensorFlow and `cp` make.
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            Ok(Some(file))
        }
        // Kernels and file systems without O_TMPFILE answer one of these.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
            NO_TMPFILE.store(true, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file(_dir: &Path) -> std::io::Result<Option<File>> {
    Ok(None)
}

/// Gives the anonymous `file` the name `dest`, replacing an existing file atomically.
#[cfg(target_os = "linux")]
fn link_anonymous(file: &File, dest: &Path) -> std::io::Result<()> {
    match link_at(file, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // linkat never replaces: link under a partial name, then rename over. A kill
            // between the two leaves a complete partial file, which the next run sweeps.
            let partial = partial_name(dest);
            link_at(file, &partial)?;
            lock(&PARTIALS).push(partial.clone());
            let renamed = std::fs::rename(&partial, dest);
            if renamed.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            forget_partial(&partial);
            renamed
        }
        other => other,
    }
}

#[cfg(target_os = "linux")]
fn link_at(file: &File, dest: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let to = CString::new(dest.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let proc_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::linkat(libc::AT_FDCWD, proc_path.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOENT) || Path::new("/proc/self/fd").exists() {
        return Err(err);
    }
    // No /proc: AT_EMPTY_PATH links the descriptor itself (needs CAP_DAC_READ_SEARCH).
    let empty = CString::default();
    // SAFETY: as above; the descriptor is open for the duration of the call.
    let rc = unsafe { libc::linkat(file.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_EMPTY_PATH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn link_anonymous(_file: &File, dest: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other(format!("{}: anonymous files exist only on Linux", dest.display())))
}

/// Whether process `pid` may still be running (false only when it surely is not).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The owning process of a partial file's name, if it is one.
fn partial_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(PARTIAL_MARK)?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the partial files that killed runs left in `dir` (once per folder and process).
pub fn sweep_stale_partials(dir: &Path) {
    let key = dir.to_path_buf();
    if !lock(&SWEPT).get_or_insert_with(HashSet::new).insert(key) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(partial_owner) else { continue };
        if pid != me && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes every partial file and every not-yet-kept output folder of this process: what a
/// signal handler calls before the process exits.
pub fn remove_partials() {
    remove_partials_where(|_| true)
}

/// [`remove_partials`] of the paths that `mine` accepts (a test's own: the registries are the
/// whole process's, and tests run side by side).
fn remove_partials_where(mine: impl Fn(&Path) -> bool) {
    let take = |list: &mut Vec<PathBuf>| {
        let (gone, kept) = std::mem::take(list).into_iter().partition(|p| mine(p));
        *list = kept;
        gone
    };
    let partials: Vec<PathBuf> = take(&mut lock(&PARTIALS));
    for p in partials {
        let _ = std::fs::remove_file(p);
    }
    let dirs: Vec<PathBuf> = take(&mut lock(&CREATED_DIRS));
    for d in dirs.into_iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// Output folders made by [`create_output_dir`]: removed again (if still empty) when dropped,
/// unless [`CreatedDirs::keep`] is called once the output is complete.
#[derive(Debug, Default)]
#[must_use = "dropping it removes the folders it created"]
pub struct CreatedDirs {
    /// Shallowest first.
    dirs: Vec<PathBuf>,
}

impl CreatedDirs {
    /// Keeps the folders: the command succeeded.
    pub fn keep(mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        lock(&CREATED_DIRS).retain(|d| !dirs.contains(d));
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            // Only an empty folder goes: whatever another output put there stays.
            let _ = std::fs::remove_dir(d);
        }
        let dirs = &self.dirs;
        lock(&CREATED_DIRS).retain(|d| !dirs.contains(d));
    }
}

/// Creates `dir` and any missing parents, remembering which ones it made.
pub fn create_output_dir(dir: &Path) -> Result<CreatedDirs> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    // The OS would say "File exists" of a file in the way, which reads as if nothing were wrong.
    if let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        return Err(Error::io(d, std::io::Error::new(std::io::ErrorKind::NotADirectory, "a file, not a folder: the output cannot go under it")));
    }
    missing.reverse();
    let created = CreatedDirs { dirs: missing };
    lock(&CREATED_DIRS).extend(created.dirs.iter().cloned());
    // Registered first: a signal arriving now still finds them.
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(created)
}

/// Writes `path` atomically: `fill` writes into an [`OutputFile`] (buffered), which appears
/// at `path` only if `fill` succeeds.
pub fn write_atomically<T>(path: &Path, fill: impl FnOnce(&mut std::io::BufWriter<&mut File>) -> Result<T>) -> Result<T> {
    let mut out = OutputFile::create(path)?;
    let value = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file_mut());
        let value = fill(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))?;
        value
    };
    // No fsync: like `cp`, durability is left to the OS; the link or rename still guarantees
    // that a reader never sees a partial file.
    out.commit()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_allocation_larger_than_the_disk_names_the_output_and_leaves_nothing() {
        // /dev/shm is a tmpfs, which allocates ahead; no machine has an exabyte of it.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else { return };
        let dest = dir.path().join("big.bin");
        let out = OutputFile::create(&dest).expect("create");
        out.allocate(4096).expect("a page fits");
        assert_eq!(out.file().metadata().expect("stat").len(), 4096);
        let err = out.allocate(1 << 60).expect_err("no room").to_string();
        assert!(err.contains("big.bin"), "{err}");
        drop(out);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn nothing_is_visible_until_commit_and_commit_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").expect("old");
        let mut out = OutputFile::create(&dest).expect("create");
        out.write_all(b"new contents").expect("write");
        assert_eq!(names(dir.path()), vec!["out.bin"], "only the old file is visible while writing");
        assert_eq!(std::fs::read(&dest).expect("read"), b"old");
        out.commit().expect("commit");
        assert_eq!(std::fs::read(&dest).expect("read"), b"new contents");
        assert_eq!(names(dir.path()), vec!["out.bin"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&dest).expect("meta").permissions().mode() & 0o777, 0o644);
        }
    }

    #[test]
    fn named_partial_files_commit_and_vanish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("n.bin");
        let mut out = OutputFile::create_named(&dest).expect("create");
        out.write_all(b"abc").expect("write");
        let listed = names(dir.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(partial_owner(&listed[0]), Some(std::process::id()), "hidden name {listed:?}");
        out.commit().expect("commit");
        assert_eq!(names(dir.path()), vec!["n.bin"]);
        let out = OutputFile::create_named(&dest).expect("create");
        drop(out);
        assert_eq!(names(dir.path()), vec!["n.bin"]);
        let out = OutputFile::create_named(&dir.path().join("m.bin")).expect("create");
        // Only this test's: another test's output in progress is not for it to remove.
        remove_partials_where(|p| p.starts_with(dir.path()));
        assert_eq!(names(dir.path()), vec!["n.bin"], "what a signal handler removes");
        drop(out);
    }

    #[test]
    fn dropped_output_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = OutputFile::create(&dir.path().join("x")).expect("create");
        out.write_all(b"abc").expect("write");
        drop(out);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn partial_names_parse_and_stale_ones_are_swept() {
        assert_eq!(partial_owner(".model.ckpt.index.partial-123-4"), Some(123));
        assert_eq!(partial_owner("model.partial-123-4"), None);
        assert_eq!(partial_owner(".x.partial-abc-1"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        // A pid above the kernel's limit (4194304) cannot be running.
        std::fs::write(dir.path().join(".a.safetensors.partial-999999999-0"), b"x").expect("stale");
        let live = format!(".b.partial-{}-0", std::process::id());
        std::fs::write(dir.path().join(&live), b"x").expect("live");
        std::fs::write(dir.path().join("keep.partial-1-1"), b"x").expect("not hidden");
        sweep_stale_partials(dir.path());
        assert_eq!(names(dir.path()), vec![live.as_str(), "keep.partial-1-1"]);
    }

    #[test]
    fn created_dirs_go_unless_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        drop(create_output_dir(&deep).expect("create"));
        assert!(!dir.path().join("a").exists(), "all three created folders removed");
        std::fs::create_dir(dir.path().join("a")).expect("pre-existing");
        drop(create_output_dir(&deep).expect("create"));
        assert!(dir.path().join("a").is_dir() && !dir.path().join("a/b").exists(), "a folder that existed stays");
        create_output_dir(&deep).expect("create").keep();
        assert!(deep.is_dir());
    }

    #[test]
    fn a_file_in_the_way_of_the_output_folder_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("file");
        let err = create_output_dir(&file.join("a/b")).expect_err("a file is in the way");
        assert_eq!(err.to_string(), format!("{}: a file, not a folder: the output cannot go under it", file.display()));
        assert_eq!(std::fs::read(&file).expect("still there"), b"x");
        assert_eq!(create_output_dir(&file).err().map(|e| e.to_string()), Some(format!("{}: a file, not a folder: the output cannot go under it", file.display())));
    }
}
