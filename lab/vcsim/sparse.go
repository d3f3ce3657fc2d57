package main

import (
	"errors"
	"hash/maphash"
	"io"
	"os"
	"sync"
	"syscall"
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

// freezeDisk copies the data extents of src (a disk's flat file) into a new sparse
// file dst of the same size, writing every data byte (so written zeros stay
// allocated), and returns one content digest per granule of the frozen disk.
func freezeDisk(src, dst string, size, granule int64) ([]uint64, error) {
	in, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	exts, err := dataExtents(in, size)
	if err != nil {
		return nil, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		_ = out.Close()
		if !ok {
			_ = os.Remove(dst)
		}
	}()
	if err := out.Truncate(size); err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		for off := e.start; off < e.end; {
			n := int64(len(buf))
			if e.end-off < n {
				n = e.end - off
			}
			if _, err := in.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				return nil, err
			}
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				return nil, err
			}
			off += n
		}
	}
	digests, err := granuleDigests(out, exts, size, granule)
	if err != nil {
		return nil, err
	}
	ok = true
	return digests, nil
}

// granuleDigests hashes every granule that holds data; granules entirely in holes
// get the digest of zeros without being read.
func granuleDigests(f *os.File, exts []extent, size, granule int64) ([]uint64, error) {
	count := (size + granule - 1) / granule
	digests := make([]uint64, count)
	for i := int64(0); i < count; i++ {
		digests[i] = zeroDigest(granuleLen(i, size, granule))
	}
	buf := make([]byte, granule)
	last := int64(-1)
	for _, e := range exts {
		for g := e.start / granule; g*granule < e.end; g++ {
			if g <= last {
				continue
			}
			n := granuleLen(g, size, granule)
			if _, err := f.ReadAt(buf[:n], g*granule); err != nil && err != io.EOF {
				return nil, err
			}
			digests[g] = maphash.Bytes(digestSeed, buf[:n])
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
