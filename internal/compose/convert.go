package compose

import (
	"math"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"reeve.dev/reeve"
)

// converter maps a compose-go project onto a reeve.Release.
type converter struct {
	p          *problems
	sub        func(string) string
	workingDir string
	raw        map[string]any // the file as parsed, for what compose-go normalizes away

	// portOrigin[service][i] is the index in the compose file's ports list
	// of the release's Ports[i] (a range expands to several ports).
	portOrigin map[string][]int
}

func (c *converter) release(pr *types.Project) reeve.Release {
	rel := reeve.Release{Services: map[string]reeve.Service{}}
	c.portOrigin = map[string][]int{}
	for _, name := range sortedKeys(pr.Services) {
		rel.Services[name] = c.service(name, pr.Services[name])
	}
	// A service others wait for to complete is a job: with no restart
	// policy it must not get reeve's default (always), or it would never
	// complete.
	for _, svc := range rel.Services {
		for dep, d := range svc.Composition.DependsOn {
			if job, ok := rel.Services[dep]; ok && d.Condition == reeve.ConditionCompleted && job.Composition.Restart == "" {
				job.Composition.Restart = "no"
				rel.Services[dep] = job
			}
		}
	}
	for _, name := range sortedKeys(pr.Networks) {
		n := pr.Networks[name]
		if n.External {
			c.p.add(join("networks", name, "external"), "external networks are not supported: reeve creates every network of a release; remove external")
			continue
		}
		net := reeve.Network{
			Driver:     n.Driver,
			DriverOpts: copyMap(n.DriverOpts),
			Internal:   n.Internal,
			Labels:     copyMap(n.Labels),
		}
		if n.EnableIPv6 != nil {
			net.EnableIPv6 = *n.EnableIPv6
		}
		if n.Ipam.Driver != "" || len(n.Ipam.Config) > 0 {
			ipam := &reeve.IPAM{Driver: n.Ipam.Driver}
			for _, pool := range n.Ipam.Config {
				if pool == nil {
					continue
				}
				ipam.Config = append(ipam.Config, reeve.IPAMConfig{Subnet: pool.Subnet, IPRange: pool.IPRange, Gateway: pool.Gateway})
			}
			net.IPAM = ipam
		}
		if rel.Networks == nil {
			rel.Networks = map[string]reeve.Network{}
		}
		rel.Networks[name] = net
	}
	for _, name := range sortedKeys(pr.Volumes) {
		v := pr.Volumes[name]
		if v.External {
			c.p.add(join("volumes", name, "external"), "external volumes are not supported: reeve creates and keeps every volume of a release; remove external")
			continue
		}
		if rel.Volumes == nil {
			rel.Volumes = map[string]reeve.Volume{}
		}
		rel.Volumes[name] = reeve.Volume{
			Driver:     v.Driver,
			DriverOpts: copyMap(v.DriverOpts),
			Labels:     copyMap(v.Labels),
		}
	}
	return rel
}

func (c *converter) rawService(name string) map[string]any {
	svcs, _ := c.raw["services"].(map[string]any)
	svc, _ := svcs[name].(map[string]any)
	return svc
}

func (c *converter) service(name string, s types.ServiceConfig) reeve.Service {
	at := join("services", name)
	raw := c.rawService(name)
	svc := reeve.Service{Image: s.Image, Running: true, Labels: copyMap(s.Labels)}

	for _, k := range sortedKeys(s.Environment) {
		v := s.Environment[k]
		if v == nil {
			c.p.add(join(at, "environment", k), "%s has no value and is not set: give it one (%s=value) or set it where the file is read", k, k)
			continue
		}
		if svc.Environment == nil {
			svc.Environment = map[string]string{}
		}
		svc.Environment[k] = *v
	}

	comp := reeve.Composition{
		Command:     c.command(at, "command", raw, s.Command),
		Entrypoint:  c.command(at, "entrypoint", raw, s.Entrypoint),
		Restart:     s.Restart,
		NetworkMode: s.NetworkMode,
		CapAdd:      copySlice(s.CapAdd),
		CapDrop:     copySlice(s.CapDrop),
		Privileged:  s.Privileged,
		WorkingDir:  s.WorkingDir,
		User:        s.User,
		Tmpfs:       copySlice(s.Tmpfs),
		Sysctls:     copyMap(s.Sysctls),
	}
	comp.Ports, c.portOrigin[name] = c.ports(join(at, "ports"), raw["ports"])
	comp.StopGracePeriod = c.duration(join(at, "stop_grace_period"), s.StopGracePeriod)

	for _, dep := range sortedKeys(s.DependsOn) {
		cond := s.DependsOn[dep].Condition
		if cond == "" {
			cond = reeve.ConditionStarted
		}
		if comp.DependsOn == nil {
			comp.DependsOn = map[string]reeve.Dependency{}
		}
		comp.DependsOn[dep] = reeve.Dependency{Condition: cond}
	}

	if h := s.HealthCheck; h != nil {
		hp := join(at, "healthcheck")
		hc := &reeve.Healthcheck{
			Test:        copySlice(h.Test),
			Interval:    c.duration(join(hp, "interval"), h.Interval),
			Timeout:     c.duration(join(hp, "timeout"), h.Timeout),
			StartPeriod: c.duration(join(hp, "start_period"), h.StartPeriod),
			Disable:     h.Disable,
		}
		if h.Retries != nil {
			if *h.Retries > math.MaxInt32 {
				c.p.add(join(hp, "retries"), "%d is too many: use at most %d", *h.Retries, math.MaxInt32)
			} else {
				hc.Retries = int(*h.Retries)
			}
		}
		comp.Healthcheck = hc
	}

	for _, n := range sortedKeys(s.Networks) {
		var sn reeve.ServiceNetwork
		if cfg := s.Networks[n]; cfg != nil {
			sn.Aliases = copySlice(cfg.Aliases)
			sn.IPv4Address = cfg.Ipv4Address
		}
		if comp.Networks == nil {
			comp.Networks = map[string]reeve.ServiceNetwork{}
		}
		comp.Networks[n] = sn
	}

	for i, v := range s.Volumes {
		vp := index(join(at, "volumes"), i)
		m := reeve.Mount{Type: v.Type, Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly}
		switch v.Type {
		case types.VolumeTypeVolume:
		case types.VolumeTypeBind:
			m.Source = c.bindSource(vp, v.Source)
		case types.VolumeTypeTmpfs:
			if v.Source != "" {
				c.p.add(vp, "a tmpfs mount takes no source, found %q", v.Source)
			}
		default:
			c.p.add(vp, "mount type %q is not supported: use volume, bind or tmpfs", v.Type)
			continue
		}
		comp.Volumes = append(comp.Volumes, m)
	}

	for _, d := range s.Devices {
		dev := reeve.DeviceMapping{Host: d.Source, Container: d.Target, Permissions: d.Permissions}
		if dev.Container == "" {
			dev.Container = dev.Host
		}
		if dev.Permissions == "" {
			dev.Permissions = "rwm"
		}
		comp.Devices = append(comp.Devices, dev)
	}

	for _, k := range sortedKeys(s.Ulimits) {
		u := s.Ulimits[k]
		if u == nil {
			continue
		}
		l := reeve.Ulimit{Soft: int64(u.Soft), Hard: int64(u.Hard)}
		if u.Single != 0 {
			l = reeve.Ulimit{Soft: int64(u.Single), Hard: int64(u.Single)}
		}
		if comp.Ulimits == nil {
			comp.Ulimits = map[string]reeve.Ulimit{}
		}
		comp.Ulimits[k] = l
	}

	svc.Composition = comp
	return svc
}

// command returns a command or entrypoint. An empty one clears the image's
// in compose, which reeve cannot express: it is refused.
func (c *converter) command(at, key string, raw map[string]any, cmd types.ShellCommand) []string {
	if len(cmd) > 0 {
		return copySlice(cmd)
	}
	if v, ok := raw[key]; ok && v != nil {
		c.p.add(join(at, key), "an empty %s is not supported: remove %s to use the image's, or give one", key, key)
	}
	return nil
}

func (c *converter) duration(at string, d *types.Duration) reeve.Duration {
	if d == nil {
		return 0
	}
	if *d < 0 {
		c.p.add(at, "%s must not be negative", time.Duration(*d))
		return 0
	}
	return reeve.Duration(*d)
}

// bindSource returns the absolute host path of a bind mount's source.
func (c *converter) bindSource(at, src string) string {
	switch {
	case src == "":
		c.p.add(at, "a bind mount needs a source: give an absolute host path")
	case strings.HasPrefix(src, "~"):
		c.p.add(at, "bind source %q: a home directory has no meaning on a device: use an absolute host path", src)
	case path.IsAbs(src):
		return src
	case c.workingDir == "":
		c.p.add(at, "bind source %q is relative and no working directory was given: use an absolute host path", src)
	default:
		wd := c.workingDir
		if !filepath.IsAbs(wd) {
			abs, err := filepath.Abs(wd)
			if err != nil {
				c.p.add(at, "bind source %q: cannot resolve working directory %q: %v: use an absolute host path", src, wd, err)
				return src
			}
			wd = abs
		}
		return path.Join(filepath.ToSlash(wd), src)
	}
	return src
}

func copyMap[M ~map[string]string](m M) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func copySlice[S ~[]string](s S) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}
