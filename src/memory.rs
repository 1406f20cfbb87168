//! Memory the process may use, and the server-wide budget of what connections can make it hold.
//!
//! - [`available_memory`]: the machine's memory, or less if this process's own cgroup (v1 or v2, at
//!   any level of its hierarchy) limits it. Defaults of the store's and the connections' budgets are
//!   fractions of it.
//! - [`MemoryBudget`]: bytes that everything a peer controls draws from — connections' fixed shares
//!   (QUIC flow-control windows, TCP buffers), request bytes read, answers waiting to be written,
//!   published messages waiting in subscribers' queues. What it has handed out never exceeds its
//!   total, so the total is the worst case of all connections together, not a product of limits.
//!
//! The budget is a semaphore of bytes: a [`Charge`] holds some, gives them back when dropped, and can
//! grow (waiting, or not) and shrink as what it covers changes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// What is assumed when neither the machine's nor the cgroup's memory can be read.
const FALLBACK_MEMORY: usize = 1 << 30;

/// The memory this process may use: the machine's total, or its cgroup's limit if that is lower (the
/// tightest limit on the path from the process's cgroup up to the root, cgroup v1 or v2). 1 GiB when
/// nothing can be read.
pub fn available_memory() -> usize {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| parse_meminfo(&info));
    let cgroup =
        match (std::fs::read_to_string("/proc/self/cgroup"), std::fs::read_to_string("/proc/self/mountinfo"))
        {
            (Ok(cgroups), Ok(mounts)) => {
                cgroup_limit(&cgroups, &mounts, |path| std::fs::read_to_string(path).ok())
            }
            _ => None,
        };
    match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, Some(c)) => c,
        (None, None) => FALLBACK_MEMORY,
    }
}

fn parse_meminfo(info: &str) -> Option<usize> {
    let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The tightest memory limit on this process's cgroup path, given `/proc/self/cgroup`,
/// `/proc/self/mountinfo` and a way to read a file. Limit files that say "max" (v2), or a number at
/// or above 2^62 (v1's way of saying unlimited), are no limit.
fn cgroup_limit(cgroups: &str, mounts: &str, read: impl Fn(&Path) -> Option<String>) -> Option<usize> {
    let mut tightest: Option<usize> = None;
    for line in cgroups.lines() {
        // "hierarchy-id:controllers:path"; v2 is "0::path".
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (v2, limit_file) = match (id, controllers) {
            ("0", "") => (true, "memory.max"),
            (_, controllers) if controllers.split(',').any(|c| c == "memory") => {
                (false, "memory.limit_in_bytes")
            }
            _ => continue,
        };
        let Some((dir, mount_point)) = cgroup_dir(mounts, v2, path) else { continue };
        // Every ancestor up to the mount point may limit this cgroup.
        let mut current: Option<&Path> = Some(&dir);
        while let Some(at) = current {
            let limit = read(&at.join(limit_file)).and_then(|text| parse_limit(&text));
            if let Some(limit) = limit {
                tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
            }
            if at == mount_point {
                break;
            }
            current = at.parent().filter(|parent| parent.starts_with(&mount_point));
        }
    }
    tightest
}

fn parse_limit(text: &str) -> Option<usize> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 62).then(|| usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// The cgroup filesystem mount (v1 with the memory controller, or v2) whose root contains `path`:
/// `(mount root within the hierarchy, mount point)`.
fn memory_mount<'a>(mounts: &'a str, v2: bool, path: &str) -> Option<(&'a str, &'a str)> {
    mounts.lines().find_map(|line| {
        // "id parent major:minor root mount-point options [optional...] - fstype source super-options"
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let (root, mount_point) = (*fields.get(3)?, *fields.get(4)?);
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let super_options = after.nth(1).unwrap_or("");
        let wanted = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && super_options.split(',').any(|o| o == "memory")
        };
        (wanted && path.starts_with(root)).then_some((root, mount_point))
    })
}

/// Where cgroup `path` (as `/proc/self/cgroup` names it) is in the filesystem, and the mount point
/// above which there is nothing more to read.
fn cgroup_dir(mounts: &str, v2: bool, path: &str) -> Option<(PathBuf, PathBuf)> {
    let (root, mount_point) = memory_mount(mounts, v2, path)?;
    let relative = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
    Some((Path::new(mount_point).join(relative), PathBuf::from(mount_point)))
}

/// A budget of bytes, shared by its clones. Every charge on it comes back when dropped.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl MemoryBudget {
    /// The most a budget can hold (tokio's semaphore limit).
    pub const MAX: usize = Semaphore::MAX_PERMITS;

    pub fn new(total: usize) -> Self {
        let total = total.min(Self::MAX);
        MemoryBudget { bytes: Arc::new(Semaphore::new(total)), total }
    }

    /// A budget too large to run out: for tests and tools that do not want one.
    pub fn unlimited() -> Self {
        Self::new(Self::MAX)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not charged now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.total - self.available()
    }

    /// A charge of nothing, to grow later.
    pub fn empty_charge(&self) -> Charge {
        Charge { budget: PollSemaphore::new(self.bytes.clone()), permit: None }
    }

    /// A charge of `bytes` if the budget has them now.
    pub fn try_charge(&self, bytes: usize) -> Option<Charge> {
        let mut charge = self.empty_charge();
        charge.try_grow(bytes).then_some(charge)
    }
}

/// Bytes held from a [`MemoryBudget`]; they return to it when the charge is dropped or shrinks.
#[derive(Debug)]
pub struct Charge {
    budget: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

/// The largest single step a charge grows by (the semaphore counts in `u32`).
const MAX_STEP: usize = u32::MAX as usize;

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
    }

    /// Grows by `bytes` if the budget has them now; otherwise changes nothing. (More than the
    /// semaphore counts at once, `u32::MAX`, is taken in steps, and given back if a step fails: a
    /// QUIC connection's share is over 4 GiB with windows of 2 GiB.)
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        let mut taken: Option<OwnedSemaphorePermit> = None;
        let mut left = bytes;
        while left > 0 {
            let step = left.min(MAX_STEP);
            let Ok(permit) = self.budget.clone_inner().try_acquire_many_owned(step as u32) else {
                // Dropping what was taken gives it back.
                return false;
            };
            match &mut taken {
                Some(held) => held.merge(permit),
                None => taken = Some(permit),
            }
            left -= step;
        }
        if let Some(permit) = taken {
            self.add(permit);
        }
        true
    }

    /// Grows until it holds at least `target` bytes, waiting for the budget while it has not enough;
    /// ready at once if it holds that much already. Waiters are served in order, so a large charge is
    /// not starved by small ones.
    pub fn poll_cover(&mut self, cx: &mut Context<'_>, target: usize) -> Poll<()> {
        while self.bytes() < target {
            let step = u32::try_from((target - self.bytes()).min(MAX_STEP)).unwrap_or(u32::MAX);
            // The budget's semaphore is never closed, so a permit always comes.
            let Some(permit) = ready!(self.budget.poll_acquire_many(cx, step)) else { return Poll::Pending };
            self.add(permit);
        }
        Poll::Ready(())
    }

    /// Waits until the charge holds at least `target` bytes. The wait keeps its place in the budget's
    /// queue of waiters from one `cover` to the next while what it lacks stays the same (another
    /// amount queues again); one given up for good must be ended with [`Charge::stop_waiting`].
    pub fn cover(&mut self, target: usize) -> Cover<'_> {
        Cover { charge: self, target }
    }

    /// Leaves the budget's queue of waiters, giving back what was set aside for this charge's wait:
    /// for a wait given up while the charge lives on (a `select!` that stopped polling it). While it
    /// stands in the queue, the bytes given back go to the first waiter until it has all it asked
    /// for, so a wait left there took every byte given back, by any connection, until it had them
    /// all, then held them beside the charge, where nothing gave them back, while every `try_grow` of
    /// the server failed.
    pub fn stop_waiting(&mut self) {
        self.budget = PollSemaphore::new(self.budget.clone_inner());
    }

    /// Gives back what it holds beyond `target` bytes.
    pub fn shrink_to(&mut self, target: usize) {
        let held = self.bytes();
        if held <= target {
            return;
        }
        if target == 0 {
            self.permit = None;
        } else if let Some(permit) = &mut self.permit {
            // Splitting off the excess and dropping it returns it to the budget.
            drop(permit.split(held - target));
        }
    }
}

/// See [`Charge::cover`].
pub struct Cover<'a> {
    charge: &'a mut Charge,
    target: usize,
}

impl Future for Cover<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.charge.poll_cover(cx, this.target)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    #[test]
    fn charges_come_back_when_dropped_or_shrunk() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.try_charge(60).unwrap();
        assert!(budget.try_charge(50).is_none(), "only 40 left");
        assert!(a.try_grow(40));
        assert_eq!((a.bytes(), budget.available()), (100, 0));
        a.shrink_to(30);
        assert_eq!((a.bytes(), budget.available()), (30, 70));
        drop(a);
        assert_eq!(budget.available(), 100);
    }

    /// A budget over 4 GiB (the default on a machine of 16 GiB) takes a charge over 4 GiB, which the
    /// semaphore counts in steps; one it cannot hold takes nothing.
    #[test]
    fn charges_over_4_gib_are_taken_whole_or_not_at_all() {
        let gib = 1usize << 30;
        let budget = MemoryBudget::new(6 * gib);
        let big = budget.try_charge(5 * gib).expect("5 GiB of 6");
        assert_eq!((big.bytes(), budget.available()), (5 * gib, gib));
        assert!(budget.try_charge(5 * gib).is_none());
        assert_eq!(budget.available(), gib, "a refused charge takes nothing");
        drop(big);
        assert_eq!(budget.available(), 6 * gib);
    }

    #[tokio::test(start_paused = true)]
    async fn cover_waits_for_the_budget_to_free_up() {
        let budget = MemoryBudget::new(100);
        let held = budget.try_charge(80).unwrap();
        let mut waiting = budget.empty_charge();
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting.cover(50)).await.is_err());
        drop(held);
        waiting.cover(50).await;
        assert_eq!(waiting.bytes(), 50);
    }

    /// A wait given up (a `select!` that stopped polling it) and stopped leaves the budget's queue: it
    /// took the bytes given back by others, and held them beside its charge, where nothing gave them
    /// back.
    #[tokio::test]
    async fn a_wait_given_up_takes_nothing_given_back_later() {
        let budget = MemoryBudget::new(100);
        let held = budget.try_charge(90).unwrap();
        let mut waiting = budget.empty_charge();
        let given_up = futures_util::FutureExt::now_or_never(tokio::task::unconstrained(waiting.cover(50)));
        assert!(given_up.is_none(), "only 10 bytes are free");
        waiting.stop_waiting();
        drop(held);
        assert_eq!(budget.available(), 100, "the bytes given back are the budget's");
        assert!(budget.try_charge(100).is_some());
        assert_eq!(waiting.bytes(), 0);
    }

    /// A fake filesystem for the cgroup parser.
    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> =
            entries.iter().map(|(path, text)| (PathBuf::from(path), text.to_string())).collect();
        move |path| map.get(path).cloned()
    }

    const V1_MOUNTS: &str = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                             32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
    const V2_MOUNTS: &str = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn a_v1_limit_is_read_from_the_process_own_cgroup_and_its_ancestors() {
        let cgroups = "9:name=systemd:/\n4:memory:/jobs/job7\n1:cpu:/\n";
        let read = files(&[
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes", "8589934592\n"),
            ("/sys/fs/cgroup/memory/jobs/job7/memory.limit_in_bytes", "2147483648\n"),
        ]);
        assert_eq!(cgroup_limit(cgroups, V1_MOUNTS, &read), Some(2 << 30));
        // A looser limit below a tighter one: the tighter ancestor wins.
        let read = files(&[
            ("/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes", "1073741824\n"),
            ("/sys/fs/cgroup/memory/jobs/job7/memory.limit_in_bytes", "9223372036854771712\n"),
        ]);
        assert_eq!(cgroup_limit(cgroups, V1_MOUNTS, &read), Some(1 << 30));
    }

    #[test]
    fn a_v2_limit_is_read_from_the_process_own_cgroup_and_max_means_none() {
        let cgroups = "0::/user.slice/app.service\n";
        let read = files(&[
            ("/sys/fs/cgroup/user.slice/app.service/memory.max", "536870912\n"),
            ("/sys/fs/cgroup/user.slice/memory.max", "max\n"),
        ]);
        assert_eq!(cgroup_limit(cgroups, V2_MOUNTS, &read), Some(512 << 20));
        let read = files(&[("/sys/fs/cgroup/user.slice/app.service/memory.max", "max\n")]);
        assert_eq!(cgroup_limit(cgroups, V2_MOUNTS, &read), None);
    }

    #[test]
    fn a_container_sees_its_cgroup_at_the_mount_root() {
        // Inside a cgroup namespace the mount's root is the container's own cgroup.
        let mounts = "40 30 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let read = files(&[("/sys/fs/cgroup/memory.max", "268435456\n")]);
        assert_eq!(cgroup_limit("0::/kubepods/pod1\n", mounts, &read), Some(256 << 20));
    }

    #[test]
    fn meminfo_total_is_in_kib() {
        assert_eq!(parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24576000 * 1024));
    }
}
