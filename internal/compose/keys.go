package compose

import (
	"net"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/format"
	"github.com/compose-spec/compose-go/v2/types"
)

// The allowlist. Every key of a compose file is checked against it before
// compose-go loads the file: a key reeve cannot honour is refused, naming it,
// never dropped. Keys starting with x- (extension fields, used as YAML
// anchor templates) are accepted at the top level and in objects compose
// defines; they carry no configuration.

// notSupported is the message for a refused key without a better hint.
const notSupported = "not supported by reeve: remove it"

// keyRule says what to do with one key: check its value (check may be nil
// when any value compose-go accepts will do).
type keyRule struct {
	check func(c *checker, at string, v any)
}

// allowed is a rule for a key whose value needs no further check.
var allowed = keyRule{}

// refusedServiceKeys say why common service keys are refused and what to do.
var refusedServiceKeys = map[string]string{
	"build":          "build the image and push it to a registry, then name it under image",
	"container_name": "reeve names containers itself: remove container_name",
	"deploy":         "reeve runs one container per service on its device: remove deploy (use restart for the restart policy)",
	"env_file":       "put the variables under environment",
	"extends":        "write the service out in full (YAML anchors and x- extension fields work)",
	"profiles":       "every service of a release runs: remove profiles",
	"links":          "services reach each other by service name on a shared network: remove links",
	"external_links": "reeve does not connect a release to containers outside it: remove external_links",
	"secrets":        "reeve has no secret store: pass secrets as environment variables or keep them in a volume",
	"configs":        "put configuration in the image, in environment variables or in a volume",
	"expose":         "services on a shared network reach each other's ports without it; use ports to publish a port on the device",
	"volumes_from":   "declare a named volume under the top-level volumes key and mount it in both services",
	"logging":        "reeve collects container logs itself: remove logging",
	"scale":          "reeve runs one container per service: remove scale",
	"pull_policy":    "reeve pulls images itself: remove pull_policy",
	"label_file":     "put the labels under labels",
	"hostname":       "services reach each other by service name: remove hostname",
}

var topKeys = map[string]keyRule{
	"version":  allowed, // obsolete, ignored as compose does
	"name":     allowed,
	"services": {check: (*checker).services},
	"networks": {check: (*checker).topNetworks},
	"volumes":  {check: (*checker).topVolumes},
}

var refusedTopKeys = map[string]string{
	"secrets": "reeve has no secret store: pass secrets as environment variables or keep them in a volume",
	"configs": "put configuration in the image, in environment variables or in a volume",
	"include": "put every service in this one compose file",
}

var serviceKeys = map[string]keyRule{
	"image":             allowed,
	"command":           allowed,
	"entrypoint":        allowed,
	"environment":       allowed,
	"labels":            allowed,
	"ports":             {check: (*checker).ports},
	"restart":           allowed,
	"depends_on":        {check: (*checker).dependsOn},
	"healthcheck":       {check: (*checker).healthcheck},
	"networks":          {check: (*checker).serviceNetworks},
	"network_mode":      allowed,
	"volumes":           {check: (*checker).serviceVolumes},
	"devices":           {check: (*checker).devices},
	"cap_add":           allowed,
	"cap_drop":          allowed,
	"privileged":        allowed,
	"working_dir":       allowed,
	"user":              allowed,
	"stop_grace_period": allowed,
	"tmpfs":             allowed,
	"sysctls":           allowed,
	"ulimits":           {check: (*checker).ulimits},
}

// checker walks the raw compose file. resolve interpolates a string, for the
// few values whose content is checked; those with unset variables are left
// to checkVariables.
type checker struct {
	p       *problems
	resolve func(string) (string, bool)
}

// document checks the top level.
func (c *checker) document(doc map[string]any) {
	c.keys("", doc, topKeys, refusedTopKeys)
}

// keys checks the keys of one mapping against rules; refused holds the
// reason for keys with a better message than notSupported. x- extension
// fields pass.
func (c *checker) keys(at string, m map[string]any, rules map[string]keyRule, refused map[string]string) {
	for _, k := range sortedKeys(m) {
		if strings.HasPrefix(k, "x-") {
			continue
		}
		kp := join(at, k)
		if r, ok := rules[k]; ok {
			if r.check != nil {
				r.check(c, kp, m[k])
			}
			continue
		}
		if why, ok := refused[k]; ok {
			c.p.add(kp, "not supported: %s", why)
		} else {
			c.p.add(kp, notSupported)
		}
	}
}

// only checks a mapping's keys against a plain list of allowed keys.
func (c *checker) only(at string, v any, keys ...string) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	rules := make(map[string]keyRule, len(keys))
	for _, k := range keys {
		rules[k] = allowed
	}
	c.keys(at, m, rules, nil)
}

func (c *checker) services(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return // compose-go reports the type
	}
	for _, name := range sortedKeys(m) {
		if svc, ok := m[name].(map[string]any); ok {
			c.keys(join(at, name), svc, serviceKeys, refusedServiceKeys)
		}
	}
}

func (c *checker) ports(at string, v any) {
	list, ok := v.([]any)
	if !ok {
		return
	}
	for i, e := range list {
		ip := index(at, i)
		switch e := e.(type) {
		case map[string]any:
			c.keys(ip, e, map[string]keyRule{
				"published": allowed, "protocol": allowed,
				"target": {check: func(c *checker, _ string, v any) {
					if s, ok := v.(string); ok {
						if t, ok := c.resolve(s); ok {
							if _, err := strconv.Atoi(t); err != nil {
								c.p.add(ip, "invalid target port %q: use a number from 1 to 65535", t)
							}
						}
					}
				}},
				"host_ip": {check: func(c *checker, _ string, v any) {
					// checked here for the entry's index: compose-go drops it
					if s, ok := v.(string); ok {
						if ip4, ok := c.resolve(s); ok && net.ParseIP(ip4) == nil {
							c.p.add(ip, "invalid host_ip %q: use an IP address such as 127.0.0.1", ip4)
						}
					}
				}},
			}, map[string]string{
				"mode": "reeve publishes ports on the device itself: remove mode",
			})
		case string:
			if spec, ok := c.resolve(e); ok {
				if _, err := types.ParsePortConfig(spec); err != nil {
					c.p.add(ip, "invalid port %q: %v: use a form such as \"8080:80\", \"127.0.0.1:53:53/udp\" or \"8000-8002:8000-8002\"", spec, err)
				}
			}
		}
	}
}

func (c *checker) dependsOn(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return // the list form names services only
	}
	for _, name := range sortedKeys(m) {
		dep, ok := m[name].(map[string]any)
		if !ok {
			continue
		}
		dp := join(at, name)
		for _, k := range sortedKeys(dep) {
			kp := join(dp, k)
			switch {
			case strings.HasPrefix(k, "x-"):
			case k == "condition":
			case k == "required":
				if b, ok := c.boolValue(dep[k]); !ok || !b {
					c.p.add(kp, "not supported: every dependency of a reeve service is required: remove required: false")
				}
			case k == "restart":
				if b, ok := c.boolValue(dep[k]); !ok || b {
					c.p.add(kp, "not supported: reeve does not restart a service when its dependency restarts: remove restart")
				}
			default:
				c.p.add(kp, notSupported)
			}
		}
	}
}

func (c *checker) healthcheck(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	c.keys(at, m, map[string]keyRule{
		"test": allowed, "interval": allowed, "timeout": allowed, "start_period": allowed,
		"retries": allowed, "disable": allowed,
	}, nil)
}

func (c *checker) serviceNetworks(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return // the list form names networks only
	}
	for _, name := range sortedKeys(m) {
		c.keys(join(at, name), asMap(m[name]), map[string]keyRule{
			"aliases": allowed, "ipv4_address": allowed,
		}, nil)
	}
}

func (c *checker) serviceVolumes(at string, v any) {
	list, ok := v.([]any)
	if !ok {
		return
	}
	for i, e := range list {
		ip := index(at, i)
		switch e := e.(type) {
		case string:
			if spec, ok := c.resolve(e); ok {
				c.volumeOptions(ip, spec)
			}
		case map[string]any:
			c.keys(ip, e, map[string]keyRule{
				"type": allowed, "source": allowed, "target": allowed, "read_only": allowed,
				"bind":   {check: (*checker).bindOptions},
				"volume": {check: (*checker).volumeVolumeOptions},
			}, map[string]string{
				"tmpfs": "a tmpfs mount takes no options here: use the service's tmpfs key for options, such as tmpfs: [\"/run:size=64m\"]",
			})
		}
	}
}

// volumeOptions checks the options of a short-syntax volume
// (source:target:options): compose-go ignores the ones it does not know.
func (c *checker) volumeOptions(at, spec string) {
	if _, err := format.ParseVolume(spec); err != nil {
		c.p.add(at, "invalid volume %q: %v: use a form such as data:/data, /host/path:/path:ro or /path", spec, err)
		return
	}
	if len(spec) < 3 {
		return // a short target only; validation checks it
	}
	parts := strings.Split(spec, ":")
	if len(parts) < 3 {
		return
	}
	for _, o := range strings.Split(strings.Join(parts[2:], ":"), ",") {
		switch o {
		case "ro", "rw":
		default:
			c.p.add(at, "volume option %q is not supported: use ro or rw only", o)
		}
	}
}

func (c *checker) bindOptions(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, k := range sortedKeys(m) {
		switch {
		case strings.HasPrefix(k, "x-"):
		case k == "create_host_path":
			if b, ok := c.boolValue(m[k]); !ok || !b {
				c.p.add(join(at, k), "not supported: reeve creates a missing bind source: remove create_host_path")
			}
		default:
			c.p.add(join(at, k), notSupported)
		}
	}
}

func (c *checker) volumeVolumeOptions(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, k := range sortedKeys(m) {
		switch {
		case strings.HasPrefix(k, "x-"):
		case k == "nocopy":
			if b, ok := c.boolValue(m[k]); !ok || b {
				c.p.add(join(at, k), "not supported: a new volume is filled from the image: remove nocopy")
			}
		default:
			c.p.add(join(at, k), notSupported)
		}
	}
}

func (c *checker) devices(at string, v any) {
	list, ok := v.([]any)
	if !ok {
		return
	}
	for i, e := range list {
		switch e := e.(type) {
		case map[string]any:
			c.only(index(at, i), e, "source", "target", "permissions")
		case string:
			if spec, ok := c.resolve(e); ok && strings.Count(spec, ":") > 2 {
				c.p.add(index(at, i), "invalid device %q: use host[:container[:permissions]], such as /dev/ttyUSB0:/dev/ttyUSB0:rwm", spec)
			}
		}
	}
}

func (c *checker) ulimits(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, name := range sortedKeys(m) {
		c.only(join(at, name), m[name], "soft", "hard")
	}
}

func (c *checker) topNetworks(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, name := range sortedKeys(m) {
		np := join(at, name)
		c.keys(np, asMap(m[name]), map[string]keyRule{
			"driver": allowed, "driver_opts": allowed, "internal": allowed, "enable_ipv6": allowed,
			"labels": allowed,
			"ipam":   {check: (*checker).ipam},
			"external": {check: func(c *checker, at string, v any) {
				if b, ok := c.boolValue(v); !ok || b {
					c.p.add(at, "external networks are not supported: reeve creates every network of a release; remove external")
				}
			}},
		}, map[string]string{
			"name": "reeve names networks itself: remove name",
		})
	}
}

func (c *checker) ipam(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	c.keys(at, m, map[string]keyRule{
		"driver": allowed,
		"config": {check: func(c *checker, at string, v any) {
			list, ok := v.([]any)
			if !ok {
				return
			}
			for i, e := range list {
				c.only(index(at, i), e, "subnet", "ip_range", "gateway")
			}
		}},
	}, nil)
}

func (c *checker) topVolumes(at string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, name := range sortedKeys(m) {
		c.keys(join(at, name), asMap(m[name]), map[string]keyRule{
			"driver": allowed, "driver_opts": allowed, "labels": allowed,
			"external": {check: func(c *checker, at string, v any) {
				if b, ok := c.boolValue(v); !ok || b {
					c.p.add(at, "external volumes are not supported: reeve creates and keeps every volume of a release; remove external")
				}
			}},
		}, map[string]string{
			"name": "reeve names volumes itself: remove name",
		})
	}
}

// boolValue reads a boolean the way compose does, interpolating strings.
func (c *checker) boolValue(v any) (bool, bool) {
	switch v := v.(type) {
	case bool:
		return v, true
	case string:
		r, ok := c.resolve(v)
		if !ok {
			return false, false
		}
		switch strings.ToLower(r) {
		case "true", "y", "yes", "on":
			return true, true
		case "false", "n", "no", "off":
			return false, true
		}
		b, err := strconv.ParseBool(r)
		return b, err == nil
	default:
		return false, false
	}
}

// asMap returns v as a mapping; a null value (networks: {default:}) is an
// empty one.
func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}
