//! A simulated disk for power-loss tests, in the style of SQLite's crash tests.
//!
//! Every write and truncation is kept in memory as an operation not yet synced
//! until `sync_data` makes the file's operations durable, and every directory
//! change (a new, removed or renamed name) stays pending until `sync_dir`.
//! [`SimFs::crash`] then simulates a power loss with a seed: each pending write
//! is kept, dropped, or kept with its bytes trashed; each pending truncation is
//! kept or dropped; each pending directory entry takes its old or its new state.
//! What was synced always survives.
//!
//! It also injects I/O errors on demand ([`SimFs::fail_next`]) to test that a
//! failed write or fsync latches the partition, and holds syncs back on demand
//! ([`SimFs::syncs`], [`SimMeta::dedup_inserts`]) to test what goes on while one is under way.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::storage::io::{VFile, Vfs};

type Inode = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(Inode),
    Dir,
}

#[derive(Debug, Clone)]
enum Op {
    Write { position: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileNode {
    /// What a reader sees now.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Operations since the last sync, in order.
    pending: Vec<Op>,
}

#[derive(Debug, Default)]
struct DirNode {
    current: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

/// Which operation fails next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOp {
    Write,
    Sync,
    /// The next write panics instead of returning: a bug in the write path,
    /// as the group-commit leader meets it mid-group.
    PanicOnWrite,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<Inode, FileNode>,
    dirs: HashMap<PathBuf, DirNode>,
    next_inode: Inode,
    fail_next: Option<FailOp>,
}

/// The simulated file system. Cloning shares the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    syncs: Arc<Gate>,
}

/// Holds calls back while closed, so that a test can look at what goes on
/// while one is under way.
#[derive(Debug, Default)]
pub struct Gate {
    /// Whether the gate is closed, and how many calls wait at it.
    state: Mutex<(bool, usize)>,
    opened: Condvar,
}

impl Gate {
    /// Returns once the gate is open.
    fn pass(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        while state.0 {
            state = self.opened.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.1 -= 1;
    }

    /// Holds every later call back, before it does anything, until
    /// [`Gate::release`].
    pub fn hold(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
    }

    /// How many calls wait at the gate.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Lets held calls (and later ones) go on.
    pub fn release(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = false;
        self.opened.notify_all();
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(&Path, String)> {
    let parent = path.parent().ok_or_else(|| not_found(path))?;
    let name = path
        .file_name()
        .ok_or_else(|| not_found(path))?
        .to_string_lossy()
        .into_owned();
    Ok((parent, name))
}

impl SimFs {
    pub fn new() -> Self {
        let fs = SimFs::default();
        fs.lock()
            .dirs
            .insert(PathBuf::from("/"), DirNode::default());
        fs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next write or sync fail with an I/O error.
    pub fn fail_next(&self, op: FailOp) {
        self.lock().fail_next = Some(op);
    }

    /// The gate every `sync_data` passes before it makes anything durable.
    pub fn syncs(&self) -> &Gate {
        &self.syncs
    }

    /// Simulates a power loss: pending operations survive, vanish or are trashed,
    /// as the seed decides. Open handles must not be used afterwards.
    pub fn crash(&self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut state = self.lock();
        let mut inodes: Vec<Inode> = state.files.keys().copied().collect();
        inodes.sort_unstable();
        for inode in inodes {
            if let Some(node) = state.files.get_mut(&inode) {
                crash_file(node, &mut rng);
            }
        }
        let mut paths: Vec<PathBuf> = state.dirs.keys().cloned().collect();
        paths.sort();
        for path in paths {
            if let Some(dir) = state.dirs.get_mut(&path) {
                crash_dir(dir, &mut rng);
            }
        }
        drop_unreachable(&mut state);
    }
}

fn crash_file(node: &mut FileNode, rng: &mut SmallRng) {
    let mut data = std::mem::take(&mut node.durable);
    for op in node.pending.drain(..) {
        match op {
            Op::Write {
                position,
                data: mut bytes,
            } => match rng.gen_range(0..3) {
                0 => {}
                1 => {
                    rng.fill(&mut bytes[..]);
                    apply_write(&mut data, position, &bytes);
                }
                _ => apply_write(&mut data, position, &bytes),
            },
            Op::SetLen(len) => {
                if rng.gen_bool(0.5) {
                    data.resize(len as usize, 0);
                }
            }
        }
    }
    node.current = data.clone();
    node.durable = data;
}

fn crash_dir(dir: &mut DirNode, rng: &mut SmallRng) {
    let names: Vec<String> = dir
        .current
        .keys()
        .chain(dir.durable.keys())
        .cloned()
        .collect();
    let mut result = BTreeMap::new();
    for name in names {
        let current = dir.current.get(&name).copied();
        let durable = dir.durable.get(&name).copied();
        let chosen = if current == durable || rng.gen_bool(0.5) {
            durable
        } else {
            current
        };
        if let Some(entry) = chosen {
            result.insert(name, entry);
        }
    }
    dir.current = result.clone();
    dir.durable = result;
}

/// Removes directories whose entry vanished and files no name points to.
fn drop_unreachable(state: &mut State) {
    let mut reachable_dirs = vec![PathBuf::from("/")];
    let mut reachable_files = std::collections::HashSet::new();
    let mut i = 0;
    while i < reachable_dirs.len() {
        let path = reachable_dirs[i].clone();
        if let Some(dir) = state.dirs.get(&path) {
            for (name, entry) in &dir.current {
                match entry {
                    Entry::Dir => reachable_dirs.push(path.join(name)),
                    Entry::File(inode) => {
                        reachable_files.insert(*inode);
                    }
                }
            }
        }
        i += 1;
    }
    let keep: std::collections::HashSet<PathBuf> = reachable_dirs.into_iter().collect();
    state.dirs.retain(|path, _| keep.contains(path));
    state
        .files
        .retain(|inode, _| reachable_files.contains(inode));
    for path in keep {
        state.dirs.entry(path).or_default();
    }
}

fn apply_write(data: &mut Vec<u8>, position: u64, bytes: &[u8]) {
    let end = position as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[position as usize..end].copy_from_slice(bytes);
}

impl State {
    fn take_failure(&mut self, op: FailOp) -> io::Result<()> {
        if self.fail_next == Some(op) {
            self.fail_next = None;
            return Err(io::Error::other(format!("injected {op:?} failure")));
        }
        Ok(())
    }

    fn lookup(&self, path: &Path) -> Option<Entry> {
        if path == Path::new("/") {
            return Some(Entry::Dir);
        }
        let (parent, name) = split(path).ok()?;
        self.dirs.get(parent)?.current.get(&name).copied()
    }

    fn dir_mut(&mut self, path: &Path) -> io::Result<&mut DirNode> {
        self.dirs.get_mut(path).ok_or_else(|| not_found(path))
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    inode: Inode,
}

impl SimFile {
    fn with_node<T>(&self, f: impl FnOnce(&mut FileNode) -> T) -> io::Result<T> {
        let mut state = self.fs.lock();
        let node = state
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file vanished"))?;
        Ok(f(node))
    }
}

impl VFile for SimFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.with_node(|node| {
            let start = (position as usize).min(node.current.len());
            let n = buf.len().min(node.current.len() - start);
            buf[..n].copy_from_slice(&node.current[start..start + n]);
            n
        })
    }

    fn write_all_at(&self, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        // Taken under the lock, raised outside it: the simulated disk stays usable.
        let panic = self.fs.lock().take_failure(FailOp::PanicOnWrite).is_err();
        assert!(!panic, "injected panic in a write");
        self.fs.lock().take_failure(FailOp::Write)?;
        self.with_node(|node| {
            for buf in bufs {
                apply_write(&mut node.current, position, buf);
                node.pending.push(Op::Write {
                    position,
                    data: buf.to_vec(),
                });
                position += buf.len() as u64;
            }
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.syncs.pass();
        self.fs.lock().take_failure(FailOp::Sync)?;
        self.with_node(|node| {
            node.durable = node.current.clone();
            node.pending.clear();
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_node(|node| {
            node.current.resize(len as usize, 0);
            node.pending.push(Op::SetLen(len));
        })
    }

    fn size_bytes(&self) -> io::Result<u64> {
        self.with_node(|node| node.current.len() as u64)
    }
}

impl Vfs for SimFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>> {
        let mut state = self.lock();
        let inode = match state.lookup(path) {
            Some(Entry::File(inode)) => inode,
            Some(Entry::Dir) => return Err(io::Error::other("is a directory")),
            None if create => {
                let (parent, name) = split(path)?;
                let inode = state.next_inode;
                state.next_inode += 1;
                state
                    .dir_mut(parent)?
                    .current
                    .insert(name, Entry::File(inode));
                state.files.insert(inode, FileNode::default());
                inode
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let mut current = PathBuf::from("/");
        for component in path.components().skip(1) {
            let name = component.as_os_str().to_string_lossy().into_owned();
            let child = current.join(&name);
            match state.lookup(&child) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => return Err(io::Error::other("a file is in the way")),
                None => {
                    state.dir_mut(&current)?.current.insert(name, Entry::Dir);
                    state.dirs.insert(child.clone(), DirNode::default());
                }
            }
            current = child;
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        let dir = state.dirs.get(path).ok_or_else(|| not_found(path))?;
        Ok(dir.current.keys().cloned().collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let (parent, name) = split(path)?;
        match state.dir_mut(parent)?.current.remove(&name) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let (parent, name) = split(path)?;
        state.dir_mut(parent)?.current.remove(&name);
        // The subtree becomes unreachable once the parent's entry is durable;
        // until then a crash may bring it back, so its nodes stay.
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let entry = state.lookup(from).ok_or_else(|| not_found(from))?;
        if entry == Entry::Dir {
            return Err(io::Error::other("renaming directories is not simulated"));
        }
        let (from_parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        state.dir_mut(from_parent)?.current.remove(&from_name);
        state.dir_mut(to_parent)?.current.insert(to_name, entry);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.take_failure(FailOp::Sync)?;
        let dir = state.dir_mut(path)?;
        dir.durable = dir.current.clone();
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().lookup(path).is_some()
    }
}

/// An in-memory [`crate::meta::MetaStore`] with the same crash semantics as the
/// simulated disk: what `sync` made durable survives [`SimMeta::crash`], the rest
/// is dropped. Lets power-loss tests run thousands of seeds quickly; sled itself
/// is exercised by the process-crash tests.
#[derive(Debug, Default)]
pub struct SimMeta {
    state: Mutex<SimMetaState>,
    dedup_inserts: Gate,
}

#[derive(Debug, Default, Clone)]
struct SimMetaState {
    current: MetaMaps,
    durable: MetaMaps,
}

#[derive(Debug, Default, Clone)]
struct MetaMaps {
    offsets: BTreeMap<(String, String, u32), u64>,
    fences: BTreeMap<String, u64>,
    dedup: BTreeMap<(String, Vec<u8>), crate::dedup::DedupEntry>,
}

impl SimMeta {
    /// The gate every `dedup_insert` passes before it stores anything.
    pub fn dedup_inserts(&self) -> &Gate {
        &self.dedup_inserts
    }

    pub fn crash(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.current = state.durable.clone();
    }

    fn with<T>(&self, f: impl FnOnce(&mut MetaMaps) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).current)
    }
}

impl crate::meta::MetaStore for SimMeta {
    fn store_id(&self) -> [u8; 16] {
        [7; 16]
    }

    fn fence_epoch(&self, producer: &str) -> crate::Result<Option<u64>> {
        Ok(self.with(|m| m.fences.get(producer).copied()))
    }

    fn set_fence_epoch(&self, producer: &str, epoch: u64) -> crate::Result<()> {
        self.with(|m| m.fences.insert(producer.to_string(), epoch));
        self.sync()
    }

    fn commit_offsets(
        &self,
        topic: &str,
        group: &str,
        offsets: &[(u32, u64)],
    ) -> crate::Result<()> {
        self.with(|m| {
            for &(partition, offset) in offsets {
                m.offsets
                    .insert((topic.into(), group.into(), partition), offset);
            }
        });
        Ok(())
    }

    fn committed_offsets(&self, topic: &str, group: &str) -> crate::Result<Vec<(u32, u64)>> {
        Ok(self.with(|m| {
            m.offsets
                .iter()
                .filter(|((t, g, _), _)| t == topic && g == group)
                .map(|((_, _, p), o)| (*p, *o))
                .collect()
        }))
    }

    fn dedup_get(
        &self,
        topic: &str,
        key: &[u8],
    ) -> crate::Result<Option<crate::dedup::DedupEntry>> {
        Ok(self.with(|m| m.dedup.get(&(topic.to_string(), key.to_vec())).copied()))
    }

    fn dedup_insert(
        &self,
        topic: &str,
        entries: &[(bytes::Bytes, crate::dedup::DedupEntry)],
        expire_before_ms: i64,
        _keys_max: u64,
    ) -> crate::Result<()> {
        self.dedup_inserts.pass();
        self.with(|m| {
            for (key, entry) in entries {
                m.dedup.insert((topic.to_string(), key.to_vec()), *entry);
            }
            m.dedup
                .retain(|(t, _), e| t != topic || e.timestamp_ms >= expire_before_ms);
        });
        Ok(())
    }

    fn delete_topic(&self, topic: &str) -> crate::Result<()> {
        self.with(|m| {
            m.offsets.retain(|(t, _, _), _| t != topic);
            m.dedup.retain(|(t, _), _| t != topic);
        });
        Ok(())
    }

    fn sync(&self) -> crate::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.durable = state.current.clone();
        Ok(())
    }
}
