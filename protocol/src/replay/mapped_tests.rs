#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const NOW: u64 = 1_800_000_000;
const BOOT: [u8; 16] = [7; 16];

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&i.to_be_bytes());
    n
}

fn open(path: &Path, mb: u64, now: u64) -> (MappedMemory, Found) {
    let (m, found) = MappedMemory::open_in_boot(path, mb << 20, now, [9; 16], BOOT).unwrap();
    m.adopt(300, 2);
    (m, found)
}

fn fresh_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay");
    (dir, path)
}

#[test]
fn remembers_a_nonce_until_it_expires() {
    let (_dir, path) = fresh_file();
    let (m, found) = open(&path, 1, NOW);
    assert_eq!(found, Found::New);
    let signed = NOW + 10;
    assert_eq!(m.remember(&nonce(1), signed, signed), Ok(Verdict::Fresh));
    assert_eq!(m.remember(&nonce(1), signed, signed + 1), Ok(Verdict::Replayed));
    assert_eq!(m.remember(&nonce(1), signed, signed + 300), Ok(Verdict::Replayed));
    // Another date is another signature.
    assert_eq!(m.remember(&nonce(1), signed + 100, signed + 100), Ok(Verdict::Fresh));
    assert_eq!(m.fullness().live, 2);
    // Past the skew, the Date check would refuse it; the memory says stale.
    assert_eq!(m.remember(&nonce(1), signed, signed + 301), Ok(Verdict::Expired));
    // Its slot is reused once a lookup meets it, and the stripe refuses what it dropped.
    for i in 2..3000 {
        assert_eq!(m.remember(&nonce(i), signed + 400, signed + 400), Ok(Verdict::Fresh), "{i}");
    }
    assert_eq!(m.remember(&nonce(1), signed + 400, signed + 401), Ok(Verdict::Fresh));
    // A sweep a minute later drops what expired: the count follows.
    let later = signed + 100 + 301 + SWEEP_SECS;
    for i in 10_000..12_000 {
        assert_eq!(m.remember(&nonce(i), later, later), Ok(Verdict::Fresh));
    }
    assert!(m.fullness().live <= 2_000 + 3_000, "{:?}", m.fullness());
}

#[test]
fn refuses_what_was_signed_before_a_new_memory() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 1, NOW);
    assert_eq!(m.remember(&nonce(1), NOW + 2, NOW + 1), Ok(Verdict::SignedBeforeMemory));
    assert_eq!(m.remember(&nonce(1), NOW - 100, NOW + 1), Ok(Verdict::SignedBeforeMemory));
    assert_eq!(m.remember(&nonce(1), NOW + 3, NOW + 3), Ok(Verdict::Fresh));
}

#[test]
fn a_restart_finds_the_memory_as_it_was() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 1, NOW);
    for i in 0..100 {
        assert_eq!(m.remember(&nonce(i), NOW + 10, NOW + 10), Ok(Verdict::Fresh));
    }
    drop(m);
    // Restarted 20 s later: no replay accepted, no fresh request refused.
    let (m, found) = open(&path, 1, NOW + 20);
    assert_eq!(found, Found::Kept);
    assert_eq!(m.began(), NOW);
    for i in 0..100 {
        assert_eq!(m.remember(&nonce(i), NOW + 10, NOW + 20), Ok(Verdict::Replayed));
    }
    assert_eq!(m.remember(&nonce(500), NOW + 20, NOW + 20), Ok(Verdict::Fresh));
    assert_eq!(m.fullness().live, 101);
    // Another bound asked later: the file keeps its own.
    let (m, found) = open(&path, 2, NOW + 21);
    assert_eq!((found, m.bytes()), (Found::Kept, 1 << 20));
}

#[test]
fn two_mappings_share_one_memory() {
    let (_dir, path) = fresh_file();
    let (a, _) = open(&path, 1, NOW);
    let (b, found) = open(&path, 1, NOW + 1);
    assert_eq!(found, Found::Kept);
    assert_eq!(a.remember(&nonce(1), NOW + 5, NOW + 5), Ok(Verdict::Fresh));
    assert_eq!(b.remember(&nonce(1), NOW + 5, NOW + 5), Ok(Verdict::Replayed));
    assert_eq!(b.remember(&nonce(2), NOW + 5, NOW + 5), Ok(Verdict::Fresh));
    assert_eq!(a.remember(&nonce(2), NOW + 5, NOW + 5), Ok(Verdict::Replayed));
    // The larger skew of either configuration holds for both.
    b.adopt(900, 2);
    assert_eq!(a.remember(&nonce(1), NOW + 5, NOW + 800), Ok(Verdict::Replayed));
}

fn damage_and_reopen(damage: impl FnOnce(&Path), expected: &str) {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 1, NOW);
    assert_eq!(m.remember(&nonce(1), NOW + 10, NOW + 10), Ok(Verdict::Fresh));
    drop(m);
    damage(&path);
    let (m, found) = open(&path, 1, NOW + 20);
    let Found::Replaced(why) = found else { panic!("{found:?}, expected {expected}") };
    assert!(why.contains(expected), "{why}");
    // A new memory: today's rule, nothing signed at or before its first second (+2).
    assert_eq!(m.began(), NOW + 20);
    assert_eq!(m.remember(&nonce(1), NOW + 10, NOW + 20), Ok(Verdict::SignedBeforeMemory));
    assert_eq!(m.remember(&nonce(2), NOW + 22, NOW + 21), Ok(Verdict::SignedBeforeMemory));
    assert_eq!(m.remember(&nonce(2), NOW + 23, NOW + 23), Ok(Verdict::Fresh));
    drop(m);
    // And the replacement is trusted at the next start.
    assert_eq!(open(&path, 1, NOW + 30).1, Found::Kept);
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

#[test]
fn a_damaged_header_is_never_trusted() {
    damage_and_reopen(|p| patch(p, H_BEGAN, &[0x55]), "checksum");
    damage_and_reopen(|p| patch(p, H_KEY + 3, &[0x55]), "checksum");
    damage_and_reopen(|p| patch(p, 0, b"XXXX"), "magic");
    damage_and_reopen(|p| std::fs::write(p, vec![0u8; 1 << 20]).unwrap(), "magic");
    damage_and_reopen(|p| OpenOptions::new().write(true).open(p).unwrap().set_len(3 << 19).unwrap(), "size");
    damage_and_reopen(|p| std::fs::write(p, b"short").unwrap(), "size");
}

#[test]
fn a_foreign_file_is_never_trusted() {
    damage_and_reopen(|p| patch(p, H_VERSION, &2u32.to_le_bytes()), "version");
    // Another boot's file (a disk file may have lost writes in a crash).
    damage_and_reopen(
        |p| {
            patch(p, H_BOOT, &[1; 16]);
            let mut data = std::fs::read(p).unwrap();
            let sum = checksum(&data[..HEADER_BYTES]);
            data[H_SUM..H_SUM + 8].copy_from_slice(&sum.to_le_bytes());
            std::fs::write(p, data).unwrap();
        },
        "boot",
    );
    // Another path's file, copied here.
    damage_and_reopen(
        |p| {
            let other = p.with_file_name("other");
            drop(open(&other, 1, NOW).0);
            std::fs::copy(&other, p).unwrap();
        },
        "another path",
    );
    // Writable by others.
    damage_and_reopen(
        |p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap();
        },
        "mode",
    );
}

#[test]
fn a_path_that_is_not_absolute_is_refused() {
    assert!(MappedMemory::open(Path::new("relative/replay"), 1 << 20, NOW, [0; 16]).is_err());
    let long = format!("/tmp/{}", "x".repeat(PATH_MAX_BYTES));
    assert!(MappedMemory::open(Path::new(&long), 1 << 20, NOW, [0; 16]).is_err());
}

#[test]
fn past_the_bound_it_fails_closed() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 1, NOW);
    let capacity = m.fullness().capacity;
    assert_eq!(capacity, (1 << 20) / BYTES_PER_NONCE);
    let signed = NOW + 10;
    let mut accepted = 0;
    for i in 0..capacity + 10 {
        match m.remember(&nonce(i), signed, signed) {
            Ok(Verdict::Fresh) => accepted += 1,
            Err(Unavailable::Full) => {}
            other => panic!("{other:?}"),
        }
    }
    // Two choices of 16 slots at 52% load: every nonce up to the bound fits.
    assert_eq!(accepted, capacity);
    assert_eq!(m.fullness().percent(), 100);
    assert_eq!(m.remember(&nonce(5), signed, signed), Ok(Verdict::Replayed));
    // Room again once they expire (each stripe sweeps when next written).
    let later = signed + 301 + SWEEP_SECS;
    for i in 0..capacity / 2 {
        assert_eq!(m.remember(&nonce(1_000_000 + i), later, later), Ok(Verdict::Fresh), "{i}");
    }
}

#[test]
fn an_idle_memory_forgets_what_expired_while_it_was_idle() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 1, NOW);
    for i in 0..1000 {
        assert_eq!(m.remember(&nonce(i), NOW + 10, NOW + 10), Ok(Verdict::Fresh));
    }
    // A day later (past the entries' 16-bit seconds wrapping): nothing old is found,
    // the same nonces are fresh signatures of a new date.
    let day = NOW + 86_400;
    for i in 0..1000 {
        assert_eq!(m.remember(&nonce(i), day, day), Ok(Verdict::Fresh), "{i}");
    }
    assert!(m.fullness().live < 1000 + 300, "{:?}", m.fullness());
}

#[test]
fn threads_racing_on_the_same_nonces_accept_each_once() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 4, NOW);
    let fresh = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..20_000 {
                    if m.remember(&nonce(i), NOW + 10, NOW + 10) == Ok(Verdict::Fresh) {
                        fresh.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(fresh.load(Ordering::Relaxed), 20_000);
    assert_eq!(m.fullness().live, 20_000);
}

/// Forks `children`, each running `body` on its own mapping of `path`; returns what
/// each wrote to its pipe (a u64) and its wait status.
fn forked(path: &Path, children: usize, body: fn(&MappedMemory) -> u64) -> Vec<u64> {
    let mut pids = Vec::new();
    for _ in 0..children {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let (m, _) = MappedMemory::open_in_boot(path, 1 << 22, NOW, [1; 16], BOOT).unwrap_or_else(|_| unsafe { libc::_exit(2) });
            let out = body(&m).to_le_bytes();
            unsafe {
                libc::write(fds[1], out.as_ptr().cast(), 8);
                libc::_exit(0)
            }
        }
        unsafe { libc::close(fds[1]) };
        pids.push((pid, fds[0]));
    }
    pids.into_iter()
        .map(|(pid, fd)| {
            let mut buf = [0u8; 8];
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
            let mut status = 0;
            unsafe {
                libc::waitpid(pid, &mut status, 0);
                libc::close(fd);
            }
            assert_eq!((n, status), (8, 0));
            u64::from_le_bytes(buf)
        })
        .collect()
}

#[test]
fn processes_racing_on_the_same_nonces_accept_each_once() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 4, NOW);
    let fresh =
        forked(&path, 4, |m| (0..20_000).filter(|&i| m.remember(&nonce(i), NOW + 10, NOW + 10) == Ok(Verdict::Fresh)).count() as u64);
    assert_eq!(fresh.iter().sum::<u64>(), 20_000, "{fresh:?}");
    assert_eq!(m.fullness().live, 20_000);
    assert!((0..20_000).all(|i| m.remember(&nonce(i), NOW + 10, NOW + 11) == Ok(Verdict::Replayed)));
}

#[test]
fn a_process_killed_holding_a_lock_wedges_no_one() {
    let (_dir, path) = fresh_file();
    let (m, _) = open(&path, 4, NOW);
    assert_eq!(m.remember(&nonce(1), NOW + 10, NOW + 10), Ok(Verdict::Fresh));
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let (child, _) = MappedMemory::open_in_boot(&path, 1 << 22, NOW, [1; 16], BOOT).unwrap_or_else(|_| unsafe { libc::_exit(2) });
        // Holds the stripe of nonce 1 and 2... mid-insert, as far as anyone can tell.
        child.lock_forever(&nonce(1));
        unsafe {
            libc::write(fds[1], b"x".as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    let mut byte = [0u8; 1];
    assert_eq!(unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) }, 1);
    let mut status = 0;
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    // The lock passes on; nothing accepted before is forgotten.
    assert_eq!(m.remember(&nonce(1), NOW + 10, NOW + 11), Ok(Verdict::Replayed));
    assert_eq!(m.remember(&nonce(2), NOW + 10, NOW + 11), Ok(Verdict::Fresh));
    assert_eq!(m.remember(&nonce(2), NOW + 10, NOW + 11), Ok(Verdict::Replayed));
    assert_eq!(m.fullness().live, 2);
}

#[test]
fn processes_opening_together_agree_on_one_file() {
    let (_dir, path) = fresh_file();
    // Each child opens (the first makes it), then inserts the same nonces.
    let fresh =
        forked(&path, 4, |m| (0..5_000).filter(|&i| m.remember(&nonce(i), NOW + 10, NOW + 10) == Ok(Verdict::Fresh)).count() as u64);
    assert_eq!(fresh.iter().sum::<u64>(), 5_000, "{fresh:?}");
    let (_, found) = open(&path, 4, NOW + 1);
    assert_eq!(found, Found::Kept);
}
