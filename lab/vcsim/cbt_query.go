package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// QueryChangedDiskAreas: the areas whose digests changed between two points of a
// disk, paged the way ESXi pages them.

type area = extent

// changedAreas compares two digest vectors and merges adjacent changed granules.
func changedAreas(old, cur []uint64, capacity, granule int64) []area {
	var out []area
	for g := range cur {
		if g < len(old) && old[g] == cur[g] {
			continue
		}
		start := int64(g) * granule
		end := start + granule
		if end > capacity {
			end = capacity
		}
		if n := len(out); n > 0 && out[n-1].end == start {
			out[n-1].end = end
		} else {
			out = append(out, area{start, end})
		}
	}
	return out
}

// page answers one QueryChangedDiskAreas call from sorted areas: at most max
// areas at or after start; the reply's length covers only what it answers.
func page(areas []area, start, capacity int64, max int) types.DiskChangeInfo {
	i := sort.Search(len(areas), func(i int) bool { return areas[i].end > start })
	info := types.DiskChangeInfo{StartOffset: start}
	for ; i < len(areas) && len(info.ChangedArea) < max; i++ {
		a := areas[i]
		if a.start < start {
			a.start = start
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.start, Length: a.end - a.start})
	}
	if i < len(areas) {
		last := info.ChangedArea[len(info.ChangedArea)-1]
		info.Length = last.Start + last.Length - start
	} else {
		info.Length = capacity - start
	}
	return info
}

// queryChangedDiskAreas implements VirtualMachine.QueryChangedDiskAreas.
func (l *lab) queryChangedDiskAreas(req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, string, types.BaseMethodFault) {
	if _, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine); !ok {
		return nil, "managed object not found: " + req.This.Value, &types.ManagedObjectNotFound{Obj: req.This}
	}
	if req.Snapshot == nil {
		return nil, "the lab needs a snapshot", &types.InvalidArgument{InvalidProperty: "snapshot"}
	}
	l.mu.Lock()
	s := l.snaps[req.Snapshot.Value]
	l.mu.Unlock()
	if s == nil {
		return nil, "managed object not found: " + req.Snapshot.Value, &types.ManagedObjectNotFound{Obj: *req.Snapshot}
	}
	if s.vm != req.This {
		return nil, fmt.Sprintf("snapshot %s is not a snapshot of %s", req.Snapshot.Value, req.This.Value),
			&types.InvalidArgument{InvalidProperty: "snapshot"}
	}
	d := s.disks[req.DeviceKey]
	if d == nil {
		return nil, fmt.Sprintf("no virtual disk with key %d", req.DeviceKey), &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	if req.StartOffset < 0 || req.StartOffset >= d.capacity {
		return nil, fmt.Sprintf("startOffset %d outside the disk (capacity %d)", req.StartOffset, d.capacity),
			&types.InvalidArgument{InvalidProperty: "startOffset"}
	}
	fileFault := &types.FileFault{File: d.fileName}
	if d.broken != "" {
		return nil, "frozen disk unavailable: " + d.broken, fileFault
	}
	if d.seq == 0 {
		return nil, "change tracking was not enabled for this disk when the snapshot was taken", fileFault
	}
	var areas []area
	if req.ChangeId == "*" {
		f, err := os.Open(d.flatPath)
		if err != nil {
			return nil, err.Error(), fileFault
		}
		areas, err = dataExtents(f, d.capacity)
		_ = f.Close()
		if err != nil {
			return nil, err.Error(), fileFault
		}
	} else {
		cut := strings.LastIndex(req.ChangeId, "/")
		if cut < 0 {
			return nil, fmt.Sprintf("malformed changeId %q", req.ChangeId), fileFault
		}
		seq, err := strconv.Atoi(req.ChangeId[cut+1:])
		if err != nil {
			return nil, fmt.Sprintf("malformed changeId %q", req.ChangeId), fileFault
		}
		l.mu.Lock()
		st := l.disks[diskID{s.vm.Value, d.key}]
		var old, cur []uint64
		if st != nil && st.uuid == req.ChangeId[:cut] && st.uuid == d.uuid {
			old, cur = st.points[seq], st.points[d.seq]
		}
		l.mu.Unlock()
		if old == nil || cur == nil {
			return nil, fmt.Sprintf("changeId %q is unknown or no longer valid for this disk", req.ChangeId), fileFault
		}
		areas = changedAreas(old, cur, d.capacity, l.cfg.granularity)
	}
	info := page(areas, req.StartOffset, d.capacity, l.cfg.pageSize)
	return &info, "", nil
}
