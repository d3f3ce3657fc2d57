// Command vcsim-lab runs VMware's vCenter simulator (govmomi's simulator package)
// with an inventory chosen by flags and, unless --plain, a Changed Block Tracking
// layer the simulator lacks. When ready it prints one JSON line on stdout and
// serves until SIGTERM/SIGINT, then removes its temporary files.
package main

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

// config holds every command-line flag.
type config struct {
	listen          string
	user            string
	password        string
	workdir         string
	plain           bool
	datacenters     int
	clusters        int
	hostsPerCluster int
	standaloneHosts int
	vmsPerHost      int
	disksPerVM      int
	diskSizes       []int64
	sharedDS        int
	localDS         bool
	oddNames        bool
	powerOn         bool
	pageSize        int
	granularity     int64
	keepPoints      int
	failSnapshotVM  string
	slowSOAPms      int
	verbose         bool
	exitOnStdinEOF  bool
}

func parseSizes(s string) ([]int64, error) {
	var out []int64
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		v, err := strconv.ParseInt(part, 10, 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("--disk-sizes: %q is not a positive byte count", part)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--disk-sizes: at least one size is needed")
	}
	return out, nil
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("vcsim-lab", flag.ContinueOnError)
	var sizes string
	fs.StringVar(&c.listen, "listen", "127.0.0.1:0", "listen address host:port (port 0 picks a free one)")
	fs.StringVar(&c.user, "user", "administrator@vsphere.local", "login user name")
	fs.StringVar(&c.password, "password", "", "login password (default: random, printed in the ready line)")
	fs.StringVar(&c.workdir, "workdir", "", "directory for datastores (default: a new temp dir, removed at exit)")
	fs.BoolVar(&c.plain, "plain", false, "run VMware's simulator unmodified (no CBT layer, no fault injection)")
	fs.IntVar(&c.datacenters, "datacenters", 1, "number of datacenters")
	fs.IntVar(&c.clusters, "clusters", 1, "clusters per datacenter")
	fs.IntVar(&c.hostsPerCluster, "hosts-per-cluster", 2, "hosts in each cluster")
	fs.IntVar(&c.standaloneHosts, "standalone-hosts", 0, "standalone hosts per datacenter")
	fs.IntVar(&c.vmsPerHost, "vms-per-host", 2, "VMs on each host")
	fs.IntVar(&c.disksPerVM, "disks-per-vm", 1, "disks of each VM")
	fs.StringVar(&sizes, "disk-sizes", "67108864", "comma-separated disk capacities in bytes, cycled over all disks")
	fs.IntVar(&c.sharedDS, "shared-datastores", 1, "datastores per datacenter mounted on all its hosts")
	fs.BoolVar(&c.localDS, "local-datastores", true, "give every host its own local datastore")
	fs.BoolVar(&c.oddNames, "odd-names", false, "give some VMs and datastores names with spaces and non-ASCII characters")
	fs.BoolVar(&c.powerOn, "power-on", true, "power the VMs on")
	fs.IntVar(&c.pageSize, "cbt-page-size", 2000, "at most this many areas per QueryChangedDiskAreas reply")
	fs.Int64Var(&c.granularity, "cbt-granularity", 64*1024, "CBT block size in bytes")
	fs.IntVar(&c.keepPoints, "cbt-keep", 64, "changeIds remembered per disk (older ones answer FileFault)")
	fs.StringVar(&c.failSnapshotVM, "fail-snapshot-vm", "", "VM name or moref whose snapshots fail (as a failed quiesce does)")
	fs.IntVar(&c.slowSOAPms, "slow-soap-ms", 0, "delay every SOAP call by this many milliseconds")
	fs.BoolVar(&c.verbose, "verbose", false, "keep the simulator's own log output")
	fs.BoolVar(&c.exitOnStdinEOF, "exit-on-stdin-eof", false, "stop (and clean up) when stdin closes, e.g. when the parent dies")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.diskSizes, err = parseSizes(sizes); err != nil {
		return nil, err
	}
	checks := []struct {
		name string
		v    int
		min  int
	}{
		{"datacenters", c.datacenters, 1}, {"clusters", c.clusters, 0},
		{"hosts-per-cluster", c.hostsPerCluster, 0}, {"standalone-hosts", c.standaloneHosts, 0},
		{"vms-per-host", c.vmsPerHost, 0}, {"disks-per-vm", c.disksPerVM, 0},
		{"shared-datastores", c.sharedDS, 0}, {"cbt-page-size", c.pageSize, 1},
		{"cbt-keep", c.keepPoints, 1}, {"slow-soap-ms", c.slowSOAPms, 0},
	}
	for _, ch := range checks {
		if ch.v < ch.min {
			return nil, fmt.Errorf("--%s must be at least %d, got %d", ch.name, ch.min, ch.v)
		}
	}
	if c.clusters*c.hostsPerCluster+c.standaloneHosts == 0 {
		return nil, fmt.Errorf("the inventory needs at least one host (clusters*hosts-per-cluster + standalone-hosts)")
	}
	if c.granularity < 512 || c.granularity%512 != 0 {
		return nil, fmt.Errorf("--cbt-granularity must be a positive multiple of 512, got %d", c.granularity)
	}
	if !c.localDS && c.sharedDS == 0 {
		return nil, fmt.Errorf("no datastores: use --shared-datastores >= 1 or --local-datastores")
	}
	if c.password == "" {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		c.password = hex.EncodeToString(b)
	}
	return c, nil
}

// readyLine is printed once on stdout when the lab serves.
type readyLine struct {
	URL        string            `json:"url"`
	User       string            `json:"user"`
	Password   string            `json:"password"`
	Thumbprint string            `json:"thumbprint"`
	Control    string            `json:"control"`
	Datastores map[string]string `json:"datastores"`
	Plain      bool              `json:"plain"`
	PID        int               `json:"pid"`
	VMs        int               `json:"vms"`
}

func thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

func run() error {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		return err
	}
	if !cfg.verbose {
		// The simulator logs every fault it answers; keep stderr for our own errors.
		log.SetOutput(discard{})
	}

	workdir := cfg.workdir
	ownWorkdir := false
	if workdir == "" {
		if workdir, err = os.MkdirTemp("", "vcsim-lab-"); err != nil {
			return err
		}
		ownWorkdir = true
	} else if err = os.MkdirAll(workdir, 0o755); err != nil {
		return err
	}
	cleanup := func() {
		if ownWorkdir {
			_ = os.RemoveAll(workdir)
		}
	}

	inv, err := buildInventory(cfg, workdir)
	if err != nil {
		cleanup()
		return fmt.Errorf("building the inventory: %w", err)
	}

	l := newLab(cfg, inv)
	if err := l.trackDisksAtStart(); err != nil {
		cleanup()
		return fmt.Errorf("preparing disk files: %w", err)
	}
	if !cfg.plain {
		simulator.Map.AddHandler(l)
	}

	svc := inv.model.Service
	svc.Listen = &url.URL{Host: cfg.listen, User: url.UserPassword(cfg.user, cfg.password)}
	svc.TLS = new(tls.Config)
	srv := svc.NewServer()
	l.serverURL = srv.URL
	// Everything reaches the simulator through our front handler: /lab/ control
	// calls, and (unless --plain) the SOAP methods the CBT layer answers itself.
	inner := srv.Config.Handler
	srv.Config.Handler = l.frontHandler(inner)

	u := *srv.URL
	u.User = nil
	ready := readyLine{
		URL:        u.String(),
		User:       cfg.user,
		Password:   cfg.password,
		Thumbprint: thumbprint(srv.Certificate().Raw),
		Control:    fmt.Sprintf("%s://%s/lab", u.Scheme, u.Host),
		Datastores: startDatastores(inv),
		Plain:      cfg.plain,
		PID:        os.Getpid(),
		VMs:        len(inv.vms),
	}
	l.ready = ready
	line, _ := json.Marshal(ready)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if cfg.exitOnStdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			sigs <- syscall.SIGTERM
		}()
	}
	fmt.Println(string(line))
	<-sigs
	srv.Close()
	cleanup()
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func main() {
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "vcsim-lab: %v\n", err)
		os.Exit(2)
	}
}

// startDatastores copies the datastores made at start: clients add to the live map
// (CreateNasDatastore), which /lab/info must not read while it changes.
func startDatastores(inv *inventory) map[string]string {
	out := make(map[string]string, len(inv.datastoreDirs))
	for k, v := range inv.datastoreDirs {
		out[k] = v
	}
	return out
}
