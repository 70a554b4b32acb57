package compose

import (
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"reeve.dev/reeve"
)

// ports reads a service's ports from the file as written, so that each port
// keeps the index of the entry it came from. A range (8000-8002:8000-8002)
// gives one port per number, in order. It returns the ports and, for each,
// the index of its entry.
func (c *converter) ports(at string, v any) ([]reeve.Port, []int) {
	list, _ := v.([]any)
	var out []reeve.Port
	var origin []int
	seen := map[reeve.Port]bool{}
	for i, e := range list {
		pp := index(at, i)
		var ports []reeve.Port
		switch e := e.(type) {
		case map[string]any:
			if p, ok := c.longPort(pp, e); ok {
				ports = append(ports, p)
			}
		default:
			spec, ok := c.scalar(e)
			if !ok {
				c.p.add(pp, "a port must be a string such as \"8080:80\" or a mapping with target, found %s", describe(e))
				continue
			}
			ports = c.shortPort(pp, spec)
		}
		for _, p := range ports {
			if seen[p] {
				continue // listed twice: compose publishes it once
			}
			seen[p] = true
			out = append(out, p)
			origin = append(origin, i)
		}
	}
	return out, origin
}

// shortPort reads [host_ip:][published:]target[/protocol], where published
// and target may be ranges of the same length.
func (c *converter) shortPort(at, spec string) []reeve.Port {
	cfgs, err := types.ParsePortConfig(spec)
	if err != nil {
		c.p.add(at, "invalid port %q: %v: use a form such as \"8080:80\", \"127.0.0.1:53:53/udp\" or \"8000-8002:8000-8002\"", spec, err)
		return nil
	}
	sort.SliceStable(cfgs, func(i, j int) bool { return cfgs[i].Target < cfgs[j].Target })
	var out []reeve.Port
	for _, cfg := range cfgs {
		if p, ok := c.port(at, int64(cfg.Target), cfg.Published, cfg.HostIP, cfg.Protocol); ok {
			out = append(out, p)
		} else {
			break // one problem per entry
		}
	}
	return out
}

// longPort reads the mapping form {target, published, host_ip, protocol}.
func (c *converter) longPort(at string, m map[string]any) (reeve.Port, bool) {
	ts, ok := c.scalar(m["target"])
	if !ok {
		c.p.add(at, "target is required: name the container port")
		return reeve.Port{}, false
	}
	target, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		c.p.add(at, "invalid target port %q: use a number from 1 to 65535", ts)
		return reeve.Port{}, false
	}
	published, _ := c.scalar(m["published"])
	hostIP, _ := c.scalar(m["host_ip"])
	protocol, _ := c.scalar(m["protocol"])
	return c.port(at, target, published, hostIP, protocol)
}

func (c *converter) port(at string, target int64, published, hostIP, protocol string) (reeve.Port, bool) {
	if target < 1 || target > math.MaxUint16 {
		c.p.add(at, "container port %d is out of range: use a number from 1 to 65535", target)
		return reeve.Port{}, false
	}
	var pub uint64
	if published != "" {
		if strings.Contains(published, "-") {
			c.p.add(at, "publishing container port %d on a range of host ports (%s) is not supported: give one host port per container port, such as 8000-8002:8000-8002", target, published)
			return reeve.Port{}, false
		}
		n, err := strconv.ParseUint(published, 10, 16)
		if err != nil {
			c.p.add(at, "invalid host port %q: use a number from 1 to 65535", published)
			return reeve.Port{}, false
		}
		pub = n
	}
	protocol = strings.ToLower(protocol)
	if protocol == "" {
		protocol = "tcp"
	}
	return reeve.Port{Target: uint16(target), Published: uint16(pub), HostIP: hostIP, Protocol: protocol}, true
}

// scalar returns a YAML scalar as a string, interpolated.
func (c *converter) scalar(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return c.sub(v), true
	case int:
		return strconv.Itoa(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case uint64:
		return strconv.FormatUint(v, 10), true
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return strconv.FormatInt(int64(v), 10), true
		}
		return strconv.FormatFloat(v, 'f', -1, 64), true
	default:
		return "", false
	}
}
