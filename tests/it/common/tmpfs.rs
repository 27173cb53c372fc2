//! A small tmpfs mounted in a temp dir: storage that really runs out (reliability F12).
//!
//! Mounting needs root (the suite runs as root, as CI does). A failed mount panics with
//! the reason: a disk-full test that quietly ran on the big disk would prove nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tempfile::TempDir;

/// A mounted tmpfs of a fixed size; unmounted (lazily, so a straggler cannot block it)
/// and its mount point removed when dropped. Drop whatever writes to it first.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes on a fresh temp dir.
    pub fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("imagersync-tmpfs-")
            .tempdir()
            .expect("tempdir for the tmpfs");
        mount(dir.path(), 0, bytes).unwrap_or_else(|e| {
            panic!(
                "cannot mount a {bytes}-byte tmpfs on {}: {e}; this test needs root (CAP_SYS_ADMIN), \
                 run the suite as root as cmd/test.sh and CI do",
                dir.path().display()
            )
        });
        Tmpfs { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the size in place (`mount -o remount,size=`): what an operator does when
    /// the registry's disk is full. Files already there stay.
    pub fn resize(&self, bytes: u64) {
        mount(self.path(), libc::MS_REMOUNT, bytes).unwrap_or_else(|e| {
            panic!("cannot resize the tmpfs on {}: {e}", self.path().display())
        });
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path().as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; MNT_DETACH only detaches the mount.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "umount {}: {}",
                self.path().display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// `mount -t tmpfs -o size=<bytes> tmpfs <at>` with extra `flags`.
fn mount(at: &Path, flags: libc::c_ulong, bytes: u64) -> std::io::Result<()> {
    let source = CString::new("tmpfs").expect("literal");
    let target = CString::new(at.as_os_str().as_bytes()).expect("path");
    let data = CString::new(format!("size={bytes},mode=0755")).expect("options");
    // SAFETY: every pointer is a valid NUL-terminated string living across the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
