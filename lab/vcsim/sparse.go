package main

import (
	"errors"
	"hash/maphash"
	"io"
	"os"
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
// name keeps the bytes of this moment. Returns one content digest per granule, from
// memo when the file is unchanged since memo was made (see digestMemo).
func freezeDisk(src, dst string, size, granule int64, memo *digestMemo) ([]uint64, *digestMemo, error) {
	if err := os.Link(src, dst); err != nil {
		return nil, memo, err
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
	if memo != nil && memo.id == id && memo.size == size && memo.granule == granule {
		ok = true
		return memo.digests, memo, nil
	}
	start := time.Now()
	exts, err := dataExtents(f, size)
	if err != nil {
		return nil, memo, err
	}
	digests, err := granuleDigests(f, exts, size, granule)
	if err != nil {
		return nil, memo, err
	}
	ok = true
	// Remember only a file last modified well before we started reading: a write after
	// our stat then always moves its mtime, however coarse the kernel's clock.
	if time.Unix(0, id.mtimeNs).Before(start.Add(-time.Second)) {
		memo = &digestMemo{id: id, size: size, granule: granule, digests: digests}
	} else {
		memo = nil
	}
	return digests, memo, nil
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

// digestMemo keeps the digests of a disk file version, so that a snapshot of a disk
// nobody wrote since the last one reads nothing (most disks, most nights).
type digestMemo struct {
	id      fileIdentity
	size    int64
	granule int64
	digests []uint64
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
