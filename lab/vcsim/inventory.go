package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// vmInfo is what the lab remembers about a VM it created.
type vmInfo struct {
	ref        types.ManagedObjectReference
	name       string
	host       string
	cluster    string
	datacenter string
}

// inventory is the simulator model plus what the lab built on top of it.
type inventory struct {
	model         *simulator.Model
	client        *vim25.Client // in-process client: no HTTP, no XML
	datastoreDirs map[string]string
	vms           []vmInfo
}

type hostInfo struct {
	ref        types.ManagedObjectReference
	name       string
	cluster    string
	dcName     string
	dcRef      types.ManagedObjectReference
	datastores []string
}

// oddSuffixes decorate some VM names so clients meet spaces and non-ASCII text.
var oddSuffixes = []string{" Ærøskøbing db", " Zürich – web", " 東京 app", " São Paulo (old)"}

func vmName(cfg *config, host string, index int, serial int) string {
	if cfg.oddNames && serial%3 == 1 {
		return fmt.Sprintf("%s VM%d%s", host, index, oddSuffixes[serial%len(oddSuffixes)])
	}
	return fmt.Sprintf("%s_VM%d", host, index)
}

// datacenterOf walks up the parents of an entity to its Datacenter.
func datacenterOf(e mo.Entity) (mo.Entity, error) {
	for e != nil {
		parent := e.Entity().Parent
		if parent == nil {
			break
		}
		obj, ok := simulator.Map.Get(*parent).(mo.Entity)
		if !ok {
			break
		}
		if parent.Type == "Datacenter" {
			return obj, nil
		}
		e = obj
	}
	return nil, fmt.Errorf("no datacenter above %s", e.Entity().Self)
}

func listHosts() ([]hostInfo, error) {
	var hosts []hostInfo
	for _, e := range simulator.Map.All("HostSystem") {
		h := e.(*simulator.HostSystem)
		dc, err := datacenterOf(h)
		if err != nil {
			return nil, err
		}
		info := hostInfo{ref: h.Self, name: h.Name, dcName: dc.Entity().Name, dcRef: dc.Entity().Self}
		if h.Parent != nil && h.Parent.Type == "ClusterComputeResource" {
			info.cluster = simulator.Map.Get(*h.Parent).(mo.Entity).Entity().Name
		}
		hosts = append(hosts, info)
	}
	sort.Slice(hosts, func(i, j int) bool {
		if hosts[i].dcName != hosts[j].dcName {
			return hosts[i].dcName < hosts[j].dcName
		}
		return hosts[i].name < hosts[j].name
	})
	return hosts, nil
}

func buildInventory(cfg *config, workdir string) (*inventory, error) {
	ctx := context.Background()
	m := simulator.VPX()
	m.Datacenter = cfg.datacenters
	m.Cluster = cfg.clusters
	m.ClusterHost = cfg.hostsPerCluster
	m.Host = cfg.standaloneHosts
	m.Datastore = 0 // the lab makes its own shared and local datastores
	m.Machine = 0   // and its own VMs, so it controls hosts, names and disks
	m.Portgroup = 0
	m.Autostart = false
	if err := m.Create(); err != nil {
		return nil, err
	}
	client, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return nil, err
	}
	inv := &inventory{model: m, client: client, datastoreDirs: map[string]string{}}

	hosts, err := listHosts()
	if err != nil {
		return nil, err
	}

	ndir := 0
	mount := func(name string, members []int) error {
		dir := filepath.Join(workdir, fmt.Sprintf("ds%d", ndir))
		ndir++
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		inv.datastoreDirs[name] = dir
		for _, i := range members {
			dss, err := object.NewHostSystem(client, hosts[i].ref).ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return err
			}
			if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
				return fmt.Errorf("datastore %q on %s: %w", name, hosts[i].name, err)
			}
			hosts[i].datastores = append(hosts[i].datastores, name)
		}
		return nil
	}

	byDC := map[string][]int{}
	var dcNames []string
	for i, h := range hosts {
		if _, ok := byDC[h.dcName]; !ok {
			dcNames = append(dcNames, h.dcName)
		}
		byDC[h.dcName] = append(byDC[h.dcName], i)
	}
	for _, dc := range dcNames {
		for i := 0; i < cfg.sharedDS; i++ {
			name := fmt.Sprintf("%s_SharedDS_%d", dc, i)
			if cfg.oddNames && i == 0 {
				name = fmt.Sprintf("%s Shared Store %d", dc, i)
			}
			if err := mount(name, byDC[dc]); err != nil {
				return nil, err
			}
		}
	}
	if cfg.localDS {
		for i := range hosts {
			if err := mount(hosts[i].name+"_LocalDS", []int{i}); err != nil {
				return nil, err
			}
		}
	}

	serial := 0
	for _, h := range hosts {
		if len(h.datastores) == 0 {
			return nil, fmt.Errorf("host %s has no datastore", h.name)
		}
		hostObj := object.NewHostSystem(client, h.ref)
		pool, err := hostObj.ResourcePool(ctx)
		if err != nil {
			return nil, err
		}
		folders, err := object.NewDatacenter(client, h.dcRef).Folders(ctx)
		if err != nil {
			return nil, err
		}
		for j := 0; j < cfg.vmsPerHost; j++ {
			info, err := createVM(ctx, cfg, inv, h, hostObj, pool, folders.VmFolder, j, serial)
			if err != nil {
				return nil, err
			}
			inv.vms = append(inv.vms, info)
			serial++
		}
	}
	return inv, nil
}

func createVM(ctx context.Context, cfg *config, inv *inventory, h hostInfo, hostObj *object.HostSystem,
	pool *object.ResourcePool, folder *object.Folder, index int, serial int) (vmInfo, error) {
	name := vmName(cfg, h.name, index, serial)
	home := h.datastores[serial%len(h.datastores)]
	spec := types.VirtualMachineConfigSpec{
		Name:    name,
		GuestId: string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		Files:   &types.VirtualMachineFileInfo{VmPathName: "[" + home + "]"},
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return vmInfo{}, err
	}
	// Keys as vSphere numbers them (controller 1000, SCSI disks 2000+), not vcsim's random ones.
	scsi.GetVirtualDevice().Key = 1000
	devices = append(devices, scsi)
	for d := 0; d < cfg.disksPerVM; d++ {
		ds := h.datastores[(serial+d)%len(h.datastores)]
		if err := os.MkdirAll(filepath.Join(inv.datastoreDirs[ds], name), 0o755); err != nil {
			return vmInfo{}, err
		}
		size := cfg.diskSizes[(serial*cfg.disksPerVM+d)%len(cfg.diskSizes)]
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), types.ManagedObjectReference{},
			fmt.Sprintf("[%s] %s/disk%d.vmdk", ds, name, d+1))
		disk.Key = int32(2000 + d)
		disk.CapacityInBytes = size
		disk.CapacityInKB = size / 1024
		devices = append(devices, disk)
	}
	spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return vmInfo{}, err
	}
	task, err := folder.CreateVM(ctx, spec, pool, hostObj)
	if err != nil {
		return vmInfo{}, err
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return vmInfo{}, fmt.Errorf("creating VM %q: %w", name, err)
	}
	ref := res.Result.(types.ManagedObjectReference)
	if cfg.powerOn {
		if _, err := object.NewVirtualMachine(inv.client, ref).PowerOn(ctx); err != nil {
			return vmInfo{}, err
		}
	}
	return vmInfo{ref: ref, name: name, host: h.name, cluster: h.cluster, datacenter: h.dcName}, nil
}
