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
//! failed write or fsync latches the partition, fills the disk
//! ([`SimFs::set_full`]: writes fail with ENOSPC part-way), cuts the power part-way
//! through work ([`SimFs::cut_power_after`]: every later change fails, as on
//! a machine that lost power mid-call), and holds syncs back on demand
//! ([`SimFs::syncs`]) to test what goes on while one is under way.

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
    /// The operation to fail, after letting this many of its kind pass.
    fail_next: Option<(FailOp, u32)>,
    power: Power,
    /// Whether the disk is full: writes fail with ENOSPC after writing part
    /// of their bytes, as a real one's can.
    full: bool,
}

/// What [`Vfs::free_bytes`] reports of a simulated disk that is not full.
pub const SIM_FREE_BYTES: u64 = 1 << 30;

/// Whether the simulated machine still has power.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Power {
    #[default]
    On,
    /// On for this many more changes (writes, truncations, syncs, directory
    /// changes), then off.
    CutAfter(u32),
    /// Every change fails until [`SimFs::crash`].
    Off,
}

/// The simulated file system. Cloning shares the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    syncs: Arc<Gate>,
}

/// Holds calls on files back while closed, so that a test can look at what
/// goes on while one is under way.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    opened: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Closed to calls on files under this directory; open when `None`.
    closed_under: Option<PathBuf>,
    /// How many calls wait at the gate.
    waiting: usize,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the gate is open to a call on the file at `path`.
    fn pass(&self, path: &Path) {
        let closed = |state: &GateState| {
            state
                .closed_under
                .as_ref()
                .is_some_and(|dir| path.starts_with(dir))
        };
        let mut state = self.state();
        state.waiting += 1;
        while closed(&state) {
            state = self.opened.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.waiting -= 1;
    }

    /// Holds every later call back, before it does anything, until
    /// [`Gate::release`].
    pub fn hold(&self) {
        self.hold_under(Path::new("/"));
    }

    /// Holds later calls on files under `dir` back until [`Gate::release`].
    pub fn hold_under(&self, dir: &Path) {
        self.state().closed_under = Some(dir.to_path_buf());
    }

    /// How many calls wait at the gate.
    pub fn held(&self) -> usize {
        self.state().waiting
    }

    /// Lets held calls (and later ones) go on.
    pub fn release(&self) {
        self.state().closed_under = None;
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
        self.fail_after(op, 0);
    }

    /// Lets `passing` operations of `op`'s kind through, then fails the next.
    pub fn fail_after(&self, op: FailOp, passing: u32) {
        self.lock().fail_next = Some((op, passing));
    }

    /// Whether a failure asked for has not happened yet; cancels it.
    pub fn cancel_failure(&self) -> bool {
        self.lock().fail_next.take().is_some()
    }

    /// Fills the disk (every later write fails with ENOSPC, part-way) or
    /// frees it again.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// The gate every `sync_data` passes before it makes anything durable.
    pub fn syncs(&self) -> &Gate {
        &self.syncs
    }

    /// Lets `changes` more changes (writes, truncations, syncs, directory
    /// changes) through, then fails every later one with an I/O error, as a
    /// machine that lost power part-way through work would leave it. Reads
    /// go on. [`SimFs::crash`] brings the power back.
    pub fn cut_power_after(&self, changes: u32) {
        self.lock().power = Power::CutAfter(changes);
    }

    /// Whether the power went off since [`SimFs::cut_power_after`].
    pub fn power_is_off(&self) -> bool {
        self.lock().power == Power::Off
    }

    /// Simulates a power loss: pending operations survive, vanish or are trashed,
    /// as the seed decides. Open handles must not be used afterwards.
    pub fn crash(&self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut state = self.lock();
        state.power = Power::On;
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
    /// Spends one change of the power left; fails once it is off.
    fn change(&mut self) -> io::Result<()> {
        match self.power {
            Power::On => Ok(()),
            Power::CutAfter(0) | Power::Off => {
                self.power = Power::Off;
                Err(io::Error::other("the power is off"))
            }
            Power::CutAfter(left) => {
                self.power = Power::CutAfter(left - 1);
                Ok(())
            }
        }
    }

    fn take_failure(&mut self, op: FailOp) -> io::Result<()> {
        match &mut self.fail_next {
            Some((next, 0)) if *next == op => {
                self.fail_next = None;
                Err(io::Error::other(format!("injected {op:?} failure")))
            }
            Some((next, passing)) if *next == op => {
                *passing -= 1;
                Ok(())
            }
            _ => Ok(()),
        }
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
    /// The name it was opened by (the gate's scope; a rename does not change it).
    path: PathBuf,
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

    /// Runs `f` on the file as one change: it fails once the power is off.
    fn change<T>(&self, f: impl FnOnce(&mut FileNode) -> T) -> io::Result<T> {
        self.fs.lock().change()?;
        self.with_node(f)
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
        if self.fs.lock().full {
            // Part of the first buffer lands, as a real write may before ENOSPC.
            if let Some(first) = bufs.first() {
                let part = &first[..first.len() / 2];
                self.change(|node| {
                    apply_write(&mut node.current, position, part);
                    node.pending.push(Op::Write {
                        position,
                        data: part.to_vec(),
                    });
                })?;
            }
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.change(|node| {
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
        self.fs.syncs.pass(&self.path);
        self.fs.lock().take_failure(FailOp::Sync)?;
        self.change(|node| {
            node.durable = node.current.clone();
            node.pending.clear();
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(|node| {
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
                state.change()?;
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
            path: path.to_path_buf(),
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
                    state.change()?;
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
        state.change()?;
        let (parent, name) = split(path)?;
        match state.dir_mut(parent)?.current.remove(&name) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.change()?;
        let (parent, name) = split(path)?;
        state.dir_mut(parent)?.current.remove(&name);
        // The subtree becomes unreachable once the parent's entry is durable;
        // until then a crash may bring it back, so its nodes stay.
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.change()?;
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
        state.change()?;
        let dir = state.dir_mut(path)?;
        dir.durable = dir.current.clone();
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().lookup(path).is_some()
    }

    fn free_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(if self.lock().full { 0 } else { SIM_FREE_BYTES })
    }
}

/// An in-memory [`crate::meta::MetaStore`] with the same crash semantics as the
/// simulated disk: what `sync` made durable survives [`SimMeta::crash`], the rest
/// is dropped. Lets power-loss tests run thousands of seeds quickly; sled itself
/// is exercised by the process-crash tests. (Dedup runs are files: they live on
/// the simulated disk.)
#[derive(Debug, Default)]
pub struct SimMeta {
    state: Mutex<SimMetaState>,
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
}

impl SimMeta {
    pub fn crash(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.current = state.durable.clone();
    }

    fn with<T>(&self, f: impl FnOnce(&mut MetaMaps) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).current)
    }
}

impl crate::meta::MetaStore for SimMeta {
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

    fn delete_topic(&self, topic: &str) -> crate::Result<()> {
        self.with(|m| m.offsets.retain(|(t, _, _), _| t != topic));
        Ok(())
    }

    fn sync(&self) -> crate::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.durable = state.current.clone();
        Ok(())
    }
}
