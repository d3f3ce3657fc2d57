package main

import (
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Linux lseek whence values; the syscall package does not name them.
const (
	seekData = 3
	seekHole = 4
)

// extent is a byte range [start, end).
type extent struct{ start, end int64 }

// dataExtents lists the allocated ranges of a file below limit, as SEEK_DATA and
// SEEK_HOLE report them: blocks the guest wrote (zeros too) are data, never-written
// ones are holes.
func dataExtents(f *os.File, limit int64) ([]extent, error) {
	fd := int(f.Fd())
	var out []extent
	off := int64(0)
	for off < limit {
		start, err := syscall.Seek(fd, off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) { // no data past off
				break
			}
			return nil, err
		}
		if start >= limit {
			break
		}
		end, err := syscall.Seek(fd, start, seekHole)
		if err != nil {
			return nil, err
		}
		if end > limit {
			end = limit
		}
		out = append(out, extent{start, end})
		off = end
	}
	return out, nil
}

// digestSeed is fixed for the life of the process: digests are only compared
// with others made by the same process.
var digestSeed = maphash.MakeSeed()

// zeroDigests caches the digest of an all-zero block per block length.
var (
	zeroDigests  = map[int64]uint64{}
	zeroDigestMu sync.Mutex
)

func zeroDigest(n int64) uint64 {
	zeroDigestMu.Lock()
	defer zeroDigestMu.Unlock()
	if d, ok := zeroDigests[n]; ok {
		return d
	}
	d := maphash.Bytes(digestSeed, make([]byte, n))
	zeroDigests[n] = d
	return d
}

// freezeDisk freezes src (a disk's flat file) as dst the way ESXi's redirect-on-write
// snapshots cost nothing: dst becomes a second name of the same file (a hard link, no
// copy). Whoever writes to the disk while it has other names first gives it a private
// copy (lab/guest.py make_private; makePrivate here before a disk grows), so the frozen
// name keeps the bytes of this moment. Returns one content digest per granule and the
// memo for the next snapshot. Digests come, cheapest first, from memo when the file is
// the one memo hashed; from memo plus the granules the guest's write log names, when
// the log chains memo's file to this one; else from hashing the whole disk.
func freezeDisk(src, dst string, size, granule int64, memo *digestMemo) ([]uint64, *digestMemo, error) {
	logPath := src + writeLogSuffix
	records, logErr := readWriteLog(logPath)
	if err := os.Link(src, dst); err != nil {
		return nil, memo, err
	}
	// Writes logged from here on belong to the next snapshot (a write between the read
	// above and the link breaks the chain below: the whole disk is hashed, safely).
	if err := os.Truncate(logPath, 0); err != nil && !os.IsNotExist(err) {
		logErr = err
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(dst)
		}
	}()
	f, err := os.Open(dst)
	if err != nil {
		return nil, memo, err
	}
	defer f.Close()
	id, err := identityOf(f)
	if err != nil {
		return nil, memo, err
	}
	start := time.Now()
	digests, err := digestsOf(f, id, size, granule, memo, records, logErr)
	if err != nil {
		return nil, memo, err
	}
	ok = true
	return digests, newMemo(id, size, granule, digests, start), nil
}

// digestsOf returns the granule digests of f (whose identity is id), cheapest first:
// memo's own when f is the file memo hashed; memo's plus the granules the write log
// names when the log chains memo's file to f; else from hashing the whole disk.
func digestsOf(f *os.File, id fileIdentity, size, granule int64, memo *digestMemo, records []writeRecord, logErr error) ([]uint64, error) {
	usable := memo != nil && memo.size == size && memo.granule == granule
	switch {
	case usable && len(records) == 0 && logErr == nil && !memo.fresh && memo.id == id:
		return memo.digests, nil
	case usable && len(records) > 0 && logErr == nil && chains(memo.id, records, id):
		digests := append([]uint64(nil), memo.digests...)
		if err := rehash(f, digests, records, size, granule); err != nil {
			return nil, err
		}
		return digests, nil
	default:
		exts, err := dataExtents(f, size)
		if err != nil {
			return nil, err
		}
		return granuleDigests(f, exts, size, granule)
	}
}

// newMemo remembers digests of the file with identity id, hashed from start on. A file
// modified within a second of our reading it may still change within the same tick of
// the kernel's clock without its mtime moving: such a memo is used only through a logged
// write (whose record names it), never on identity alone.
func newMemo(id fileIdentity, size, granule int64, digests []uint64, start time.Time) *digestMemo {
	fresh := !time.Unix(0, id.mtimeNs).Before(start.Add(-time.Second))
	return &digestMemo{id: id, size: size, granule: granule, digests: digests, fresh: fresh}
}

// settleDisk does ahead of time what a disk's first snapshot does for CBT: digest the
// whole disk as it is and start its write log afresh. ESXi has tracked a running VM's
// writes long before its first backup; the simulator would otherwise hash every disk
// inside the first backup's snapshots. The next snapshot then re-hashes only what the
// guest writes from here on. It first waits until the file is more than a second old, so
// that the memo can be trusted on identity alone (newMemo).
func settleDisk(src string, size, granule int64, memo *digestMemo) (*digestMemo, error) {
	if fi, err := os.Stat(src); err == nil {
		if wait := time.Until(fi.ModTime().Add(1100 * time.Millisecond)); wait > 0 {
			time.Sleep(wait)
		}
	}
	logPath := src + writeLogSuffix
	records, logErr := readWriteLog(logPath)
	// As in freezeDisk: writes logged from here on chain from the file hashed below, and a
	// write between the read above and the truncation breaks the chain (full hash, safely).
	if err := os.Truncate(logPath, 0); err != nil && !os.IsNotExist(err) {
		logErr = err
	}
	f, err := os.Open(src)
	if err != nil {
		return memo, err
	}
	defer f.Close()
	id, err := identityOf(f)
	if err != nil {
		return memo, err
	}
	start := time.Now()
	digests, err := digestsOf(f, id, size, granule, memo, records, logErr)
	if err != nil {
		return memo, err
	}
	return newMemo(id, size, granule, digests, start), nil
}

const writeLogSuffix = ".writes"

// writeRecord is one line of a disk's write log (lab/guest.py DiskWriter): the range
// written and the file's inode and mtime just before and just after.
type writeRecord struct {
	offset, length          int64
	preIno, postIno         uint64
	preMtimeNs, postMtimeNs int64
}

func readWriteLog(path string) ([]writeRecord, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []writeRecord
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		var r writeRecord
		if n, err := fmt.Sscan(line, &r.offset, &r.length, &r.preIno, &r.preMtimeNs, &r.postIno, &r.postMtimeNs); err != nil || n != 6 {
			return nil, fmt.Errorf("%s: bad record %q", path, line)
		}
		out = append(out, r)
	}
	return out, nil
}

// chains reports whether the records lead, each from the file the previous one left,
// from the file memo hashed to the file now frozen: then no write escaped the log
// (one that did would have moved the mtime between two records).
func chains(from fileIdentity, records []writeRecord, to fileIdentity) bool {
	ino, mtime := from.ino, from.mtimeNs
	for _, r := range records {
		if r.preIno != ino || r.preMtimeNs != mtime || r.offset < 0 || r.length < 0 {
			return false
		}
		ino, mtime = r.postIno, r.postMtimeNs
	}
	return ino == to.ino && mtime == to.mtimeNs
}

// rehash recomputes the digests of the granules the records wrote.
func rehash(f *os.File, digests []uint64, records []writeRecord, size, granule int64) error {
	buf := make([]byte, granule)
	done := map[int64]bool{}
	for _, r := range records {
		if r.length == 0 {
			continue
		}
		end := r.offset + r.length
		if end > size {
			end = size
		}
		for g := r.offset / granule; g*granule < end; g++ {
			if done[g] {
				continue
			}
			n := granuleLen(g, size, granule)
			if _, err := f.ReadAt(buf[:n], g*granule); err != nil && err != io.EOF {
				return err
			}
			digests[g] = maphash.Bytes(digestSeed, buf[:n])
			done[g] = true
		}
	}
	return nil
}

// fileIdentity names one version of a file: the same inode, size and mtime.
type fileIdentity struct {
	dev, ino uint64
	size     int64
	mtimeNs  int64
}

func identityOf(f *os.File) (fileIdentity, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileIdentity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileIdentity{}, errors.New("no stat_t")
	}
	return fileIdentity{dev: uint64(st.Dev), ino: st.Ino, size: fi.Size(), mtimeNs: fi.ModTime().UnixNano()}, nil
}

// digestMemo keeps the digests of the disk file as last frozen, so that the next
// snapshot reads nothing of a disk nobody wrote, and only the written blocks of one the
// guest wrote (most disks, most nights).
type digestMemo struct {
	id      fileIdentity
	size    int64
	granule int64
	digests []uint64
	fresh   bool // modified within a second of hashing: usable only through the log
}

// makePrivate gives path its own copy of the data when a snapshot shares it (more than
// one link): data extents are copied into a new sparse file that replaces path.
func makePrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Nlink <= 1 {
		return nil
	}
	in, err := os.Open(path)
	if err != nil {
		return err
	}
	defer in.Close()
	exts, err := dataExtents(in, fi.Size())
	if err != nil {
		return err
	}
	tmp := path + ".private-tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		_ = out.Close()
		if !done {
			_ = os.Remove(tmp)
		}
	}()
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		for off := e.start; off < e.end; {
			n := int64(len(buf))
			if e.end-off < n {
				n = e.end - off
			}
			if _, err := in.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				return err
			}
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	done = true
	return nil
}

// granuleDigests hashes every granule that holds data; granules entirely in holes
// get the digest of zeros without being read.
func granuleDigests(f *os.File, exts []extent, size, granule int64) ([]uint64, error) {
	count := (size + granule - 1) / granule
	digests := make([]uint64, count)
	for i := int64(0); i < count; i++ {
		digests[i] = zeroDigest(granuleLen(i, size, granule))
	}
	// Hash the page cache in place (no copy into a buffer) when the file covers size.
	var mapped []byte
	if fi, err := f.Stat(); err == nil && fi.Size() >= size && size > 0 {
		if m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED); err == nil {
			mapped = m
			defer func() { _ = syscall.Munmap(m) }()
		}
	}
	buf := make([]byte, granule)
	last := int64(-1)
	for _, e := range exts {
		for g := e.start / granule; g*granule < e.end; g++ {
			if g <= last {
				continue
			}
			n := granuleLen(g, size, granule)
			if mapped != nil {
				digests[g] = maphash.Bytes(digestSeed, mapped[g*granule:g*granule+n])
			} else {
				if _, err := f.ReadAt(buf[:n], g*granule); err != nil && err != io.EOF {
					return nil, err
				}
				digests[g] = maphash.Bytes(digestSeed, buf[:n])
			}
			last = g
		}
	}
	return digests, nil
}

func granuleLen(g, size, granule int64) int64 {
	if rest := size - g*granule; rest < granule {
		return rest
	}
	return granule
}
