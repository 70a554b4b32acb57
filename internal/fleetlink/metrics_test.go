package fleetlink

import (
	"path/filepath"
	"runtime"
	"testing"
)

func TestMetricsFromProcAndSys(t *testing.T) {
	root := t.TempDir()
	stat := filepath.Join(root, "proc/stat")
	writeFile(t, stat, "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\nintr 1\n")
	writeFile(t, filepath.Join(root, "proc/meminfo"), "MemTotal:        4000000 kB\nMemFree:          500000 kB\nMemAvailable:    1000000 kB\n")
	writeFile(t, filepath.Join(root, "sys/class/thermal/thermal_zone0/type"), "gpu-thermal\n")
	writeFile(t, filepath.Join(root, "sys/class/thermal/thermal_zone0/temp"), "40000\n")
	writeFile(t, filepath.Join(root, "sys/class/thermal/thermal_zone1/type"), "cpu-thermal\n")
	writeFile(t, filepath.Join(root, "sys/class/thermal/thermal_zone1/temp"), "48312\n")
	m := newMetricsReader(root, t.TempDir())
	if s := m.read(); s.cpuUsage != nil {
		t.Errorf("cpu usage of the first reading = %v, want none: there is nothing to compare with", *s.cpuUsage)
	}

	writeFile(t, stat, "cpu  150 0 150 850 50 0 0 0 0 0\n") // 200 ticks, 100 idle (iowait counts as idle)
	s := m.read()
	if s.cpuUsage == nil || *s.cpuUsage != 50 {
		t.Errorf("cpu usage = %v, want 50", s.cpuUsage)
	}
	if s.memTotal == nil || *s.memTotal != 3906 || s.memUsage == nil || *s.memUsage != 2929 {
		t.Errorf("memory = %v of %v, want 2929 of 3906 MiB", s.memUsage, s.memTotal)
	}
	if s.cpuTemp == nil || *s.cpuTemp != 48.3 {
		t.Errorf("cpu temp = %v, want 48.3 from the cpu zone", s.cpuTemp)
	}
	if runtime.GOOS == "linux" && (s.storageTotal == nil || s.storageUsage == nil || *s.storageTotal <= 0) {
		t.Errorf("storage = %v of %v, want the data directory's file system", s.storageUsage, s.storageTotal)
	}

	// The next reading is of the time since the last one.
	writeFile(t, stat, "cpu  150 0 150 950 50 0 0 0 0 0\n")
	if s := m.read(); s.cpuUsage == nil || *s.cpuUsage != 0 {
		t.Errorf("cpu usage of an idle spell = %v, want 0", s.cpuUsage)
	}
}

func TestMetricsAbsentWhenNotThere(t *testing.T) {
	m := newMetricsReader(t.TempDir(), t.TempDir())
	s := m.read()
	if s.cpuUsage != nil || s.cpuTemp != nil || s.memTotal != nil || s.memUsage != nil {
		t.Errorf("metrics = %+v, want unknown ones left out", s)
	}
}

func TestMemInfoWithoutMemAvailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meminfo")
	writeFile(t, path, "MemTotal: 1024000 kB\nMemFree: 100000 kB\nBuffers: 50000 kB\nCached: 250000 kB\n")
	total, avail, ok := readMemInfo(path)
	if !ok || total != 1024000 || avail != 400000 {
		t.Errorf("readMemInfo = %d, %d, %v; want 1024000, 400000", total, avail, ok)
	}
}

func TestOSVersion(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc/os-release"), "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n")
	if got := osVersion(root); got != "Debian GNU/Linux 12 (bookworm)" {
		t.Errorf("os version = %q", got)
	}
	if got := osVersion(t.TempDir()); got != "" {
		t.Errorf("os version without os-release = %q, want none", got)
	}
}

func TestVirtualInterfaces(t *testing.T) {
	for name, want := range map[string]bool{"eth0": false, "wlan0": false, "docker0": true, "br-1a2b": true, "veth12": true, "balena0": true} {
		if got := isVirtual(name); got != want {
			t.Errorf("isVirtual(%q) = %v, want %v", name, got, want)
		}
	}
}
