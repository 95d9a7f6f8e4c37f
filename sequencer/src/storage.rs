//! The file operations the log needs, behind a trait so tests can replace the disk.
//!
//! [`FsStorage`] is the real file system. [`FaultyStorage`] keeps files in memory and models
//! what a crash leaves behind: bytes written but not yet fsynced may or may not survive, and
//! from a chosen fsync on the "disk" fails, so a test can crash the log at every fsync in turn
//! and check what recovery finds (the approach of redb's crash-consistency tests).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A file open for appending.
pub trait WritableFile: Send + fmt::Debug {
    /// Appends bytes at the end of the file (not yet durable).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// The file system as the log uses it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The files (not directories) directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn exists(&self, path: &Path) -> bool;
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Reads `len` bytes at `offset`, fewer at the end of the file.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists (atomic, as `rename(2)`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creation and removal of files in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsFile(File);

impl WritableFile for FsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            if item.file_type()?.is_file() {
                files.push(item.path());
            }
        }
        files.sort();
        Ok(files)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().create_new(true).append(true).open(path)?;
        Ok(Box::new(FsFile(file)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(FsFile(file)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// One in-memory file: the bytes a crash is sure to keep, and those written since the last sync.
#[derive(Debug, Clone, Default)]
struct MemoryFile {
    durable: Vec<u8>,
    pending: Vec<u8>,
}

#[derive(Debug, Default)]
struct Disk {
    files: BTreeMap<PathBuf, MemoryFile>,
    /// fsyncs (of files and directories) so far.
    syncs: u64,
    /// The fsync at which the disk fails, and everything after it.
    fail_at_sync: Option<u64>,
    failed: bool,
    /// While set, the fsync of a file under this directory waits: a disk slower than its
    /// appenders (the empty path stalls every file).
    stalled: Option<PathBuf>,
}

impl Disk {
    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("injected failure: the disk is gone"));
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.check()?;
        self.syncs += 1;
        if Some(self.syncs) == self.fail_at_sync {
            self.failed = true;
            return Err(io::Error::other(format!(
                "injected failure at fsync {}",
                self.syncs
            )));
        }
        Ok(())
    }
}

/// An in-memory disk that can be told to fail at the n-th fsync, and then "crashed": what
/// survives is every file's synced bytes plus a prefix of its unsynced bytes (a torn write).
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    disk: Arc<Mutex<Disk>>,
    /// Signalled when a stall ends.
    resumed: Arc<Condvar>,
}

#[derive(Debug)]
struct FaultyFile {
    disk: Arc<Mutex<Disk>>,
    resumed: Arc<Condvar>,
    path: PathBuf,
}

fn lock(disk: &Mutex<Disk>) -> MutexGuard<'_, Disk> {
    disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} does not exist", path.display()),
    )
}

impl WritableFile for FaultyFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        disk.check()?;
        let file = disk
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        file.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        while disk
            .stalled
            .as_ref()
            .is_some_and(|dir| self.path.starts_with(dir))
        {
            disk = self
                .resumed
                .wait(disk)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        disk.sync()?;
        let file = disk
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        let pending = std::mem::take(&mut file.pending);
        file.durable.extend_from_slice(&pending);
        Ok(())
    }
}

impl FaultyStorage {
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    /// Makes the `n`-th fsync from now on (counting from 1) fail, and every operation after it.
    pub fn fail_at_sync(&self, n: u64) {
        let mut disk = lock(&self.disk);
        disk.fail_at_sync = Some(disk.syncs + n);
    }

    /// Makes every file fsync wait until [`FaultyStorage::resume`]: appenders then outrun the
    /// disk.
    pub fn stall(&self) {
        self.stall_under(Path::new(""));
    }

    /// Makes the fsyncs of files under `dir` wait until [`FaultyStorage::resume`]; other files
    /// sync as usual.
    pub fn stall_under(&self, dir: &Path) {
        lock(&self.disk).stalled = Some(dir.to_path_buf());
    }

    /// Lets stalled fsyncs go on.
    pub fn resume(&self) {
        lock(&self.disk).stalled = None;
        self.resumed.notify_all();
    }

    /// fsyncs performed so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.disk).syncs
    }

    /// What a restart after a crash finds: for each file, its synced bytes and a prefix of its
    /// unsynced ones, cut at a point chosen by `cut(path, unsynced_len)`. The returned disk works
    /// normally.
    pub fn crash(&self, mut cut: impl FnMut(&Path, usize) -> usize) -> FaultyStorage {
        let disk = lock(&self.disk);
        let files = disk
            .files
            .iter()
            .map(|(path, file)| {
                let keep = cut(path, file.pending.len()).min(file.pending.len());
                let mut durable = file.durable.clone();
                durable.extend_from_slice(&file.pending[..keep]);
                (
                    path.clone(),
                    MemoryFile {
                        durable,
                        pending: Vec::new(),
                    },
                )
            })
            .collect();
        FaultyStorage {
            disk: Arc::new(Mutex::new(Disk {
                files,
                ..Disk::default()
            })),
            resumed: Arc::default(),
        }
    }

    /// Replaces a file's contents (for tests that damage files).
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        lock(&self.disk).files.insert(
            path.to_path_buf(),
            MemoryFile {
                durable: bytes,
                pending: Vec::new(),
            },
        );
    }

    /// A file's contents, synced or not.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.disk).files.get(path).map(|f| {
            let mut bytes = f.durable.clone();
            bytes.extend_from_slice(&f.pending);
            bytes
        })
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        lock(&self.disk).check()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let disk = lock(&self.disk);
        disk.check()?;
        Ok(disk
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        lock(&self.disk).files.contains_key(path)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let disk = lock(&self.disk);
        let file = disk.files.get(path).ok_or_else(|| not_found(path))?;
        Ok((file.durable.len() + file.pending.len()) as u64)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let disk = lock(&self.disk);
        disk.check()?;
        let file = disk.files.get(path).ok_or_else(|| not_found(path))?;
        let mut bytes = file.durable.clone();
        bytes.extend_from_slice(&file.pending);
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut disk = lock(&self.disk);
        disk.check()?;
        if disk.files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        disk.files.insert(path.to_path_buf(), MemoryFile::default());
        Ok(Box::new(FaultyFile {
            disk: Arc::clone(&self.disk),
            resumed: Arc::clone(&self.resumed),
            path: path.to_path_buf(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let disk = lock(&self.disk);
        disk.check()?;
        if !disk.files.contains_key(path) {
            return Err(not_found(path));
        }
        Ok(Box::new(FaultyFile {
            disk: Arc::clone(&self.disk),
            resumed: Arc::clone(&self.resumed),
            path: path.to_path_buf(),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        disk.sync()?;
        let file = disk.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let mut bytes = std::mem::take(&mut file.durable);
        bytes.append(&mut file.pending);
        bytes.truncate(len as usize);
        file.durable = bytes;
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        disk.check()?;
        disk.files.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        disk.check()?;
        let file = disk.files.remove(from).ok_or_else(|| not_found(from))?;
        disk.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        lock(&self.disk).sync()
    }
}
