package fleetlink

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// metricsSample is one reading of the device's metrics; nil is unknown.
// Sizes are in MiB, temperatures in °C, usages in percent.
type metricsSample struct {
	cpuUsage     *float64
	cpuTemp      *float64
	memUsage     *int64
	memTotal     *int64
	storageUsage *int64
	storageTotal *int64
}

// metricsReader reads the metrics from the host's /proc and /sys. CPU
// usage is the share of busy time since the previous reading, so the first
// reading has none (a share of a few milliseconds would be noise). It is
// used by one goroutine at a time.
type metricsReader struct {
	root    string // where /proc and /sys are
	dataDir string // the file system whose storage is reported

	prevTotal, prevIdle uint64
	havePrev            bool
}

func newMetricsReader(root, dataDir string) *metricsReader {
	return &metricsReader{root: root, dataDir: dataDir}
}

func (m *metricsReader) read() metricsSample {
	var s metricsSample
	if total, idle, ok := readCPUTimes(filepath.Join(m.root, "proc/stat")); ok {
		if m.havePrev && total > m.prevTotal && idle >= m.prevIdle {
			dt, di := total-m.prevTotal, idle-m.prevIdle
			s.cpuUsage = ptr(round1(100 * float64(dt-min(di, dt)) / float64(dt)))
		}
		m.prevTotal, m.prevIdle, m.havePrev = total, idle, true
	}
	if total, avail, ok := readMemInfo(filepath.Join(m.root, "proc/meminfo")); ok {
		s.memTotal, s.memUsage = ptr(total/1024), ptr((total-min(avail, total))/1024)
	}
	if total, used, ok := storage(m.dataDir); ok {
		s.storageTotal, s.storageUsage = ptr(int64(total>>20)), ptr(int64(used>>20))
	}
	if t, ok := readCPUTemp(filepath.Join(m.root, "sys/class/thermal")); ok {
		s.cpuTemp = ptr(t)
	}
	return s
}

// readCPUTimes reads the cpu line of /proc/stat: all time and idle time
// (idle + iowait), in ticks.
func readCPUTimes(path string) (total, idle uint64, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, false
	}
	// user nice system idle iowait irq softirq steal (guest is in user)
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return total, idle, true
}

// readMemInfo reads MemTotal and MemAvailable (kB) from /proc/meminfo;
// kernels older than 3.14 lack MemAvailable, which is then estimated.
func readMemInfo(path string) (total, avail int64, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	vals := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, found := strings.Cut(sc.Text(), ":")
		if !found {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
			vals[name] = v
		}
	}
	total, ok = vals["MemTotal"]
	if !ok || total <= 0 {
		return 0, 0, false
	}
	avail, ok = vals["MemAvailable"]
	if !ok {
		avail = vals["MemFree"] + vals["Buffers"] + vals["Cached"]
	}
	return total, avail, true
}

// readCPUTemp reads the CPU's temperature from the thermal zones: the zone
// whose type names the CPU, else the first that reads.
func readCPUTemp(dir string) (float64, bool) {
	zones, _ := filepath.Glob(filepath.Join(dir, "thermal_zone*"))
	sort.Strings(zones)
	var first *float64
	for _, z := range zones {
		b, err := os.ReadFile(filepath.Join(z, "temp"))
		if err != nil {
			continue
		}
		milli, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			continue
		}
		t := round1(float64(milli) / 1000)
		if t < -60 || t > 200 { // a sensor that is not there
			continue
		}
		typ, _ := os.ReadFile(filepath.Join(z, "type"))
		if strings.Contains(strings.ToLower(string(typ)), "cpu") {
			return t, true
		}
		if first == nil {
			first = &t
		}
	}
	if first == nil {
		return 0, false
	}
	return *first, true
}

// osVersion is PRETTY_NAME from the host's os-release.
func osVersion(root string) string {
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME=")
			if !ok {
				continue
			}
			if u, err := strconv.Unquote(v); err == nil {
				return u
			}
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// netInfo returns the device's addresses (non-loopback unicast, space
// separated) and the MAC addresses of the interfaces that carry them.
func netInfo() (ips, macs string) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", ""
	}
	var ipList, macList []string
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagUp == 0 || isVirtual(ifc.Name) {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		found := false
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || !ipn.IP.IsGlobalUnicast() {
				continue
			}
			ipList = append(ipList, ipn.IP.String())
			found = true
		}
		if found && len(ifc.HardwareAddr) > 0 {
			macList = append(macList, ifc.HardwareAddr.String())
		}
	}
	return strings.Join(ipList, " "), strings.Join(macList, " ")
}

// isVirtual tells container plumbing apart: not a way to reach the device.
func isVirtual(name string) bool {
	for _, p := range []string{"docker", "br-", "veth", "balena", "resin", "supervisor", "cni", "flannel"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
