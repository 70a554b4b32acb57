package docker

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"

	"reeve.dev/reeve"
)

// containerName is <service>_<commit>_<h8>, h8 being the first 8 hex
// characters of sha256(appUUID + "/" + configHash): unique per app and
// definition, stable across releases that keep the definition.
func containerName(service, commit, appUUID, configHash string) string {
	return service + "_" + commit + "_" + shortHash(appUUID+"/"+configHash)
}

// parseContainerName splits <service>_<commit>_<h8> from the right: service
// names may contain '_', commits and h8 cannot.
func parseContainerName(name string) (service, commit, h8 string, ok bool) {
	name = strings.TrimPrefix(name, "/")
	i := strings.LastIndexByte(name, '_')
	if i <= 0 {
		return "", "", "", false
	}
	h8 = name[i+1:]
	rest := name[:i]
	j := strings.LastIndexByte(rest, '_')
	if j <= 0 {
		return "", "", "", false
	}
	if h8 == "" || j == len(rest)-1 {
		return "", "", "", false
	}
	return rest[:j], rest[j+1:], h8, true
}

// engineName is the engine name of a release network or volume.
func engineName(appUUID, name string) string { return appUUID + "_" + name }

// createRequest is everything ContainerCreate needs, plus the networks to
// connect after create (API 1.41 takes one endpoint at create).
type createRequest struct {
	name       string
	config     *container.Config
	host       *container.HostConfig
	networking *network.NetworkingConfig
	// connect lists further networks (engine name → endpoint) to connect
	// before the container is started.
	connect map[string]*network.EndpointSettings
	// serviceNetwork is the service whose container's network stack this
	// one shares (network_mode service:<name>), "" for none.
	serviceNetwork string
}

// containerSpec maps a service spec to the engine's create request. Every
// field of reeve.Composition is applied here.
func containerSpec(spec reeve.ServiceSpec, prefix string) (*createRequest, error) {
	svc := spec.Service
	c := svc.Composition
	image, err := reeve.NormalizeImage(svc.Image)
	if err != nil {
		return nil, err
	}
	hash := svc.ConfigHash()
	req := &createRequest{
		name:       containerName(spec.ServiceName, spec.Commit, prefix+spec.AppUUID, hash),
		config:     &container.Config{Image: image},
		host:       &container.HostConfig{},
		networking: &network.NetworkingConfig{},
	}
	cfg, host := req.config, req.host

	// Identity.
	labels := map[string]string{}
	maps.Copy(labels, svc.Labels)
	netNames := slices.Sorted(maps.Keys(c.Networks))
	var volNames []string
	for _, m := range c.Volumes {
		if m.Type == reeve.MountVolume && m.Source != "" && !slices.Contains(volNames, m.Source) {
			volNames = append(volNames, m.Source)
		}
	}
	sort.Strings(volNames)
	maps.Copy(labels, map[string]string{
		LabelManaged:     "true",
		LabelAppUUID:     spec.AppUUID,
		LabelAppID:       strconv.FormatInt(spec.AppID, 10),
		LabelServiceName: spec.ServiceName,
		LabelConfigHash:  hash,
		LabelImage:       image,
		LabelNetworks:    strings.Join(netNames, ","),
		LabelVolumes:     strings.Join(volNames, ","),
	})
	cfg.Labels = labels

	// Process.
	if len(c.Command) > 0 {
		cfg.Cmd = slices.Clone(c.Command)
	}
	if len(c.Entrypoint) > 0 {
		cfg.Entrypoint = slices.Clone(c.Entrypoint)
	}
	env := map[string]string{}
	maps.Copy(env, svc.Environment)
	maps.Copy(env, spec.ExtraEnv) // what the agent adds (device identity) wins
	for _, k := range slices.Sorted(maps.Keys(env)) {
		cfg.Env = append(cfg.Env, k+"="+env[k])
	}
	cfg.WorkingDir = c.WorkingDir
	cfg.User = c.User
	if c.StopGracePeriod > 0 {
		secs := int((c.StopGracePeriod.D() + time.Second - 1) / time.Second)
		cfg.StopTimeout = &secs
	}
	if hc := c.Healthcheck; hc != nil {
		if hc.Disable {
			cfg.Healthcheck = &container.HealthConfig{Test: []string{"NONE"}}
		} else {
			cfg.Healthcheck = &container.HealthConfig{
				Test:        slices.Clone(hc.Test),
				Interval:    hc.Interval.D(),
				Timeout:     hc.Timeout.D(),
				StartPeriod: hc.StartPeriod.D(),
				Retries:     hc.Retries,
			}
		}
	}

	// Restart policy.
	policy := c.RestartPolicy()
	name, count, hasCount := strings.Cut(policy, ":")
	host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyMode(name)}
	if hasCount {
		n, err := strconv.Atoi(count)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("invalid restart policy %q", policy)
		}
		host.RestartPolicy.MaximumRetryCount = n
	}

	// Ports: every port is published; published 0 is an ephemeral host port.
	for _, p := range c.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		port, ok := network.PortFrom(p.Target, network.IPProtocol(proto))
		if !ok {
			return nil, fmt.Errorf("invalid port %d/%s", p.Target, proto)
		}
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = network.PortSet{}
			host.PortBindings = network.PortMap{}
		}
		cfg.ExposedPorts[port] = struct{}{}
		b := network.PortBinding{}
		if p.Published != 0 {
			b.HostPort = strconv.Itoa(int(p.Published))
		}
		if p.HostIP != "" {
			ip, err := netip.ParseAddr(p.HostIP)
			if err != nil {
				return nil, fmt.Errorf("invalid host_ip %q of port %d", p.HostIP, p.Target)
			}
			b.HostIP = ip
		}
		host.PortBindings[port] = append(host.PortBindings[port], b)
	}

	// Networking.
	switch mode := c.NetworkMode; {
	case strings.HasPrefix(mode, "service:"):
		req.serviceNetwork = strings.TrimPrefix(mode, "service:")
		// HostConfig.NetworkMode is set to container:<id> once the
		// service's container is known.
	case mode != "":
		host.NetworkMode = container.NetworkMode(mode)
	case len(netNames) > 0:
		req.connect = map[string]*network.EndpointSettings{}
		for i, n := range netNames {
			sn := c.Networks[n]
			ep := &network.EndpointSettings{Aliases: append([]string{spec.ServiceName}, sn.Aliases...)}
			if sn.IPv4Address != "" {
				ip, err := netip.ParseAddr(sn.IPv4Address)
				if err != nil {
					return nil, fmt.Errorf("invalid ipv4_address %q on network %q", sn.IPv4Address, n)
				}
				ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: ip}
			}
			full := engineName(prefix+spec.AppUUID, n)
			if i == 0 {
				host.NetworkMode = container.NetworkMode(full)
				req.networking.EndpointsConfig = map[string]*network.EndpointSettings{full: ep}
			} else {
				req.connect[full] = ep
			}
		}
	}

	// Storage.
	for _, m := range append(slices.Clone(c.Volumes), spec.ExtraMounts...) {
		switch m.Type {
		case reeve.MountVolume:
			mt := mount.Mount{Type: mount.TypeVolume, Target: m.Target, ReadOnly: m.ReadOnly}
			if m.Source != "" {
				mt.Source = engineName(prefix+spec.AppUUID, m.Source)
			}
			host.Mounts = append(host.Mounts, mt)
		case reeve.MountBind:
			// Binds (not Mounts) so that a missing host directory is
			// created, as compose's short syntax does.
			b := m.Source + ":" + m.Target
			if m.ReadOnly {
				b += ":ro"
			}
			host.Binds = append(host.Binds, b)
		case reeve.MountTmpfs:
			host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeTmpfs, Target: m.Target, ReadOnly: m.ReadOnly})
		default:
			return nil, fmt.Errorf("unknown mount type %q for %s", m.Type, m.Target)
		}
	}
	for _, t := range c.Tmpfs {
		if host.Tmpfs == nil {
			host.Tmpfs = map[string]string{}
		}
		p, opts, _ := strings.Cut(t, ":")
		host.Tmpfs[p] = opts
	}

	// Devices and privileges.
	for _, d := range c.Devices {
		dm := container.DeviceMapping{PathOnHost: d.Host, PathInContainer: d.Container, CgroupPermissions: d.Permissions}
		if dm.PathInContainer == "" {
			dm.PathInContainer = d.Host
		}
		if dm.CgroupPermissions == "" {
			dm.CgroupPermissions = "rwm"
		}
		host.Devices = append(host.Devices, dm)
	}
	host.CapAdd = slices.Clone(c.CapAdd)
	host.CapDrop = slices.Clone(c.CapDrop)
	host.Privileged = c.Privileged
	if len(c.Sysctls) > 0 {
		host.Sysctls = maps.Clone(c.Sysctls)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Ulimits)) {
		u := c.Ulimits[name]
		host.Ulimits = append(host.Ulimits, &container.Ulimit{Name: name, Soft: u.Soft, Hard: u.Hard})
	}
	return req, nil
}

// splitList splits a comma-joined label value; "" gives nil.
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// internalLabel reports whether a label is one reeve sets for itself (the
// release may only set io.reeve.update.* and io.reeve.features.*).
func internalLabel(k string) bool {
	rest, ok := strings.CutPrefix(k, reeve.LabelPrefix)
	return ok && !strings.HasPrefix(rest, "update.") && !strings.HasPrefix(rest, "features.")
}
