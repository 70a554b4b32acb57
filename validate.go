package reeve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/distribution/reference"
)

var (
	uuidRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
	commitRe  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9.-]{0,63}$`)
	nameRe    = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	envNameRe = regexp.MustCompile(`^[^=\x00]+$`)
)

// ParseTargetState decodes and validates a v3 target state. Unknown keys are
// refused; every problem is reported with its path.
func ParseTargetState(data []byte) (TargetState, error) {
	var p problems
	var top map[string]json.RawMessage
	if err := strictDecode(data, &top); err != nil {
		p.add("", "target state must be a JSON object keyed by device UUID: %v", err)
		return nil, p.err()
	}
	ts := TargetState{}
	for uuid, raw := range top {
		dev, ok := parseDevice(raw, uuid, &p)
		if ok {
			ts[uuid] = dev
		}
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	if err := ts.Validate(); err != nil {
		return nil, err
	}
	return ts, nil
}

func parseDevice(raw json.RawMessage, at string, p *problems) (DeviceTarget, bool) {
	var w struct {
		Name   string                     `json:"name"`
		Config map[string]string          `json:"config"`
		Apps   map[string]json.RawMessage `json:"apps"`
	}
	if err := strictDecode(raw, &w); err != nil {
		p.add(at, "%v", err)
		return DeviceTarget{}, false
	}
	dev := DeviceTarget{Name: w.Name, Config: w.Config, Apps: map[string]App{}}
	ok := true
	for uuid, raw := range w.Apps {
		app, aok := parseApp(raw, join("apps", uuid), p)
		ok = ok && aok
		dev.Apps[uuid] = app
	}
	return dev, ok
}

func parseApp(raw json.RawMessage, at string, p *problems) (App, bool) {
	var w struct {
		ID       int64                      `json:"id"`
		Name     string                     `json:"name"`
		Class    string                     `json:"class"`
		Releases map[string]json.RawMessage `json:"releases"`
		Config   map[string]string          `json:"config"`
	}
	if err := strictDecode(raw, &w); err != nil {
		p.add(at, "%v", err)
		return App{}, false
	}
	app := App{ID: w.ID, Name: w.Name, Class: w.Class, Releases: map[string]Release{}, Config: w.Config}
	ok := true
	for commit, raw := range w.Releases {
		rel, rok := parseRelease(raw, join(at, "releases", commit), p)
		ok = ok && rok
		app.Releases[commit] = rel
	}
	return app, ok
}

func parseRelease(raw json.RawMessage, at string, p *problems) (Release, bool) {
	var w struct {
		ID       int64                      `json:"id"`
		Services map[string]json.RawMessage `json:"services"`
		Volumes  map[string]json.RawMessage `json:"volumes"`
		Networks map[string]json.RawMessage `json:"networks"`
	}
	if err := strictDecode(raw, &w); err != nil {
		p.add(at, "%v", err)
		return Release{}, false
	}
	rel := Release{ID: w.ID, Services: map[string]Service{}}
	ok := true
	for name, raw := range w.Services {
		svc, sok := parseService(raw, join(at, "services", name), p)
		ok = ok && sok
		rel.Services[name] = svc
	}
	if len(w.Volumes) > 0 {
		rel.Volumes = map[string]Volume{}
	}
	for name, raw := range w.Volumes {
		var v Volume
		if err := strictDecode(raw, &v); err != nil {
			p.add(join(at, "volumes", name), "%v", err)
			ok = false
		}
		rel.Volumes[name] = v
	}
	if len(w.Networks) > 0 {
		rel.Networks = map[string]Network{}
	}
	for name, raw := range w.Networks {
		var n Network
		if err := strictDecode(raw, &n); err != nil {
			p.add(join(at, "networks", name), "%v", err)
			ok = false
		}
		rel.Networks[name] = n
	}
	return rel, ok
}

func parseService(raw json.RawMessage, at string, p *problems) (Service, bool) {
	var w struct {
		ID          int64             `json:"id"`
		ImageID     int64             `json:"image_id"`
		Image       string            `json:"image"`
		Running     *bool             `json:"running"`
		Environment map[string]string `json:"environment"`
		Labels      map[string]string `json:"labels"`
		Composition json.RawMessage   `json:"composition"`
	}
	if err := strictDecode(raw, &w); err != nil {
		p.add(at, "%v", err)
		return Service{}, false
	}
	svc := Service{ID: w.ID, ImageID: w.ImageID, Image: w.Image, Running: true,
		Environment: w.Environment, Labels: w.Labels}
	if w.Running != nil {
		svc.Running = *w.Running
	}
	if len(w.Composition) > 0 && string(w.Composition) != "null" {
		if err := strictDecode(w.Composition, &svc.Composition); err != nil {
			p.add(join(at, "composition"), "%v", err)
			return svc, false
		}
	}
	return svc, true
}

// strictDecode decodes one JSON value, refusing unknown keys and trailing
// data, with error messages that do not start with "json: ".
func strictDecode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field != "" {
				return fmt.Errorf("%s: expected %s, got a JSON %s", te.Field, te.Type, te.Value)
			}
			return fmt.Errorf("expected %s, got a JSON %s", te.Type, te.Value)
		}
		if errors.Is(err, io.EOF) {
			return errors.New("empty document")
		}
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

// Validate checks a whole target state and lists every problem with its path.
func (ts TargetState) Validate() error {
	var p problems
	for _, uuid := range sortedKeys(ts) {
		if !uuidRe.MatchString(uuid) {
			p.add(uuid, "invalid device UUID %q: use lowercase letters, digits and dashes (at most 64)", uuid)
		}
		ts[uuid].validate("", &p)
	}
	return p.err()
}

// Validate checks one device's target; paths start at "apps".
func (d DeviceTarget) Validate() error {
	var p problems
	d.validate("", &p)
	return p.err()
}

func (d DeviceTarget) validate(at string, p *problems) {
	for k := range d.Config {
		if !envNameRe.MatchString(k) {
			p.add(join(at, "config"), "invalid config variable name %q", k)
		}
	}
	for _, uuid := range sortedKeys(d.Apps) {
		app := d.Apps[uuid]
		ap := join(at, "apps", uuid)
		if !uuidRe.MatchString(uuid) {
			p.add(ap, "invalid app UUID %q: use lowercase letters, digits and dashes (at most 64)", uuid)
		}
		app.validate(ap, p)
	}
}

func (a App) validate(at string, p *problems) {
	switch a.Class {
	case "", ClassFleet, ClassApp:
		if len(a.Config) > 0 {
			p.add(join(at, "config"), "only a dependent app has config: put device config in the device's config")
		}
	case ClassDependent:
		for k := range a.Config {
			if !envNameRe.MatchString(k) {
				p.add(join(at, "config"), "invalid config variable name %q", k)
			}
		}
		for _, commit := range sortedKeys(a.Releases) {
			if n := len(a.Releases[commit].Services); n != 1 {
				p.add(join(at, "releases", commit, "services"), "a dependent app's release is one image holding the firmware under /assets: found %d services", n)
			}
		}
	default:
		p.add(join(at, "class"), "unsupported app class %q: use %q, %q or %q", a.Class, ClassFleet, ClassApp, ClassDependent)
	}
	if a.ID < 0 {
		p.add(join(at, "id"), "must not be negative")
	}
	if len(a.Releases) > 1 {
		p.add(join(at, "releases"), "an app has one target release, found %d", len(a.Releases))
	}
	for _, commit := range sortedKeys(a.Releases) {
		rp := join(at, "releases", commit)
		if !commitRe.MatchString(commit) {
			p.add(rp, "invalid commit %q: use letters, digits, dots and dashes (at most 64)", commit)
		}
		a.Releases[commit].validate(rp, p)
	}
}

func (r Release) validate(at string, p *problems) {
	for _, name := range sortedKeys(r.Networks) {
		np := join(at, "networks", name)
		if !nameRe.MatchString(name) {
			p.add(np, "invalid network name %q: use letters, digits, '_', '.' and '-'", name)
		}
		n := r.Networks[name]
		if n.IPAM != nil {
			for i, c := range n.IPAM.Config {
				if c.Subnet != "" {
					if _, err := netip.ParsePrefix(c.Subnet); err != nil {
						p.add(fmt.Sprintf("%s.ipam.config[%d].subnet", np, i), "invalid subnet %q: use CIDR form such as 172.28.0.0/16", c.Subnet)
					}
				}
				if c.Gateway != "" {
					if _, err := netip.ParseAddr(c.Gateway); err != nil {
						p.add(fmt.Sprintf("%s.ipam.config[%d].gateway", np, i), "invalid address %q", c.Gateway)
					}
				}
			}
		}
		validateLabels(np, n.Labels, p)
	}
	for _, name := range sortedKeys(r.Volumes) {
		vp := join(at, "volumes", name)
		if !nameRe.MatchString(name) {
			p.add(vp, "invalid volume name %q: use letters, digits, '_', '.' and '-'", name)
		}
		validateLabels(vp, r.Volumes[name].Labels, p)
	}
	if len(r.Services) == 0 {
		p.add(join(at, "services"), "a release needs at least one service")
	}
	for _, name := range sortedKeys(r.Services) {
		sp := join(at, "services", name)
		if !nameRe.MatchString(name) {
			p.add(sp, "invalid service name %q: use letters, digits, '_', '.' and '-' (at most 63)", name)
		}
		r.Services[name].validate(sp, name, r, p)
	}
	if cycle := dependencyCycle(r.Services); cycle != "" {
		p.add(join(at, "services"), "depends_on forms a cycle: %s", cycle)
	}
}

var restartRe = regexp.MustCompile(`^(no|always|unless-stopped|on-failure(:[0-9]+)?)$`)

func (s Service) validate(at, name string, r Release, p *problems) {
	if s.Image == "" {
		p.add(join(at, "image"), "required: name the image to run, such as registry.example.com/app/web:1.2")
	} else if _, err := NormalizeImage(s.Image); err != nil {
		p.add(join(at, "image"), "%v", err)
	}
	for k := range s.Environment {
		if !envNameRe.MatchString(k) {
			p.add(join(at, "environment"), "invalid variable name %q", k)
		}
	}
	validateLabels(join(at, "labels"), s.Labels, p)
	switch st := s.Strategy(); st {
	case StrategyDownloadThenKill, StrategyKillThenDownload, StrategyDeleteThenDownload, StrategyHandOver:
	default:
		p.add(join(at, "labels", LabelUpdateStrategy), "unknown update strategy %q: use %s, %s, %s or %s",
			st, StrategyDownloadThenKill, StrategyKillThenDownload, StrategyDeleteThenDownload, StrategyHandOver)
	}
	if v, ok := s.Label(LabelHandoverTimeout); ok {
		var ms int64
		if _, err := fmt.Sscan(v, &ms); err != nil || ms <= 0 || fmt.Sprint(ms) != v {
			p.add(join(at, "labels", LabelHandoverTimeout), "must be a positive number of milliseconds, got %q", v)
		}
	}
	c := s.Composition
	cp := join(at, "composition")
	if c.Restart != "" && !restartRe.MatchString(c.Restart) {
		p.add(join(cp, "restart"), "unknown restart policy %q: use no, always, unless-stopped or on-failure[:N]", c.Restart)
	}
	for i, port := range c.Ports {
		pp := fmt.Sprintf("%s.ports[%d]", cp, i)
		if port.Target == 0 {
			p.add(pp, "target port is required and must be 1-65535")
		}
		switch port.Protocol {
		case "", "tcp", "udp", "sctp":
		default:
			p.add(pp, "unknown protocol %q: use tcp or udp", port.Protocol)
		}
		if port.HostIP != "" {
			if _, err := netip.ParseAddr(port.HostIP); err != nil {
				p.add(pp, "invalid host_ip %q", port.HostIP)
			}
		}
	}
	for _, dep := range sortedKeys(c.DependsOn) {
		dp := join(cp, "depends_on", dep)
		if _, ok := r.Services[dep]; !ok {
			p.add(dp, "depends on service %q, which is not in the release", dep)
		}
		if dep == name {
			p.add(dp, "a service cannot depend on itself")
		}
		switch cond := c.DependsOn[dep].Condition; cond {
		case "", ConditionStarted, ConditionHealthy:
			// service_healthy on a service without a healthcheck in the
			// release is allowed: its image may declare one.
		case ConditionCompleted:
			if d, ok := r.Services[dep]; ok {
				if rp := d.Composition.RestartPolicy(); rp == "always" || rp == "unless-stopped" {
					p.add(dp, "waits for service %q to complete, but its restart policy is %s, so it never would: set its restart to \"no\" or \"on-failure\"", dep, rp)
				}
			}
		default:
			p.add(join(dp, "condition"), "unknown condition %q: use %s, %s or %s", cond, ConditionStarted, ConditionHealthy, ConditionCompleted)
		}
	}
	if h := c.Healthcheck; h != nil && !h.Disable && len(h.Test) > 0 {
		switch h.Test[0] {
		case "CMD", "CMD-SHELL", "NONE":
		default:
			p.add(join(cp, "healthcheck", "test"), "must start with CMD, CMD-SHELL or NONE, got %q", h.Test[0])
		}
		if h.Retries < 0 {
			p.add(join(cp, "healthcheck", "retries"), "must not be negative")
		}
	}
	if c.NetworkMode != "" {
		switch {
		case c.NetworkMode == "host", c.NetworkMode == "none", c.NetworkMode == "bridge":
		case strings.HasPrefix(c.NetworkMode, "service:"):
			other := strings.TrimPrefix(c.NetworkMode, "service:")
			if _, ok := r.Services[other]; !ok {
				p.add(join(cp, "network_mode"), "uses the network of service %q, which is not in the release", other)
			}
		default:
			p.add(join(cp, "network_mode"), "unsupported network_mode %q: use host, none, bridge or service:<name>", c.NetworkMode)
		}
		if len(c.Networks) > 0 {
			p.add(join(cp, "networks"), "cannot be combined with network_mode %q", c.NetworkMode)
		}
	}
	for _, n := range sortedKeys(c.Networks) {
		if _, ok := r.Networks[n]; !ok {
			p.add(join(cp, "networks", n), "network %q is not defined in the release's networks", n)
		}
		if a := c.Networks[n].IPv4Address; a != "" {
			if ip, err := netip.ParseAddr(a); err != nil || !ip.Is4() {
				p.add(join(cp, "networks", n, "ipv4_address"), "invalid IPv4 address %q", a)
			}
		}
	}
	targets := map[string]bool{}
	for i, m := range c.Volumes {
		mp := fmt.Sprintf("%s.volumes[%d]", cp, i)
		if !path.IsAbs(m.Target) {
			p.add(mp, "target %q must be an absolute path in the container", m.Target)
		}
		if targets[m.Target] {
			p.add(mp, "target %q is mounted twice", m.Target)
		}
		targets[m.Target] = true
		switch m.Type {
		case MountVolume:
			if m.Source != "" {
				if _, ok := r.Volumes[m.Source]; !ok {
					p.add(mp, "volume %q is not defined in the release's volumes: add it under the top-level volumes key", m.Source)
				}
			}
		case MountBind:
			if !path.IsAbs(m.Source) {
				p.add(mp, "bind source %q must be an absolute host path", m.Source)
			}
		case MountTmpfs:
		default:
			p.add(mp, "unknown mount type %q: use volume, bind or tmpfs", m.Type)
		}
	}
	for i, d := range c.Devices {
		if !path.IsAbs(d.Host) {
			p.add(fmt.Sprintf("%s.devices[%d]", cp, i), "host device %q must be an absolute path such as /dev/ttyUSB0", d.Host)
		}
		if d.Container != "" && !path.IsAbs(d.Container) {
			p.add(fmt.Sprintf("%s.devices[%d]", cp, i), "container path %q must be absolute", d.Container)
		}
		if strings.Trim(d.Permissions, "rwm") != "" {
			p.add(fmt.Sprintf("%s.devices[%d]", cp, i), "permissions %q may only hold r, w and m", d.Permissions)
		}
	}
	for i, t := range c.Tmpfs {
		if !path.IsAbs(strings.SplitN(t, ":", 2)[0]) {
			p.add(fmt.Sprintf("%s.tmpfs[%d]", cp, i), "%q must be an absolute path in the container", t)
		}
	}
	if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
		p.add(join(cp, "working_dir"), "%q must be an absolute path", c.WorkingDir)
	}
	for _, k := range sortedKeys(c.Ulimits) {
		if u := c.Ulimits[k]; u.Soft > u.Hard && u.Hard >= 0 {
			p.add(join(cp, "ulimits", k), "soft limit %d is above hard limit %d", u.Soft, u.Hard)
		}
	}
}

// reservedLabel reports whether a label key belongs to reeve itself and may
// not be set by a release.
func reservedLabel(k string) bool {
	if !strings.HasPrefix(k, LabelPrefix) {
		return false
	}
	rest := strings.TrimPrefix(k, LabelPrefix)
	return !strings.HasPrefix(rest, "update.") && !strings.HasPrefix(rest, "features.")
}

func validateLabels(at string, labels map[string]string, p *problems) {
	for _, k := range sortedKeys(labels) {
		if k == "" {
			p.add(at, "a label key must not be empty")
		}
		if reservedLabel(k) {
			p.add(join(at, k), "labels under %s are set by reeve itself; only %supdate.* and %sfeatures.* may be set", LabelPrefix, LabelPrefix, LabelPrefix)
		}
	}
}

// dependencyCycle returns a description of a depends_on cycle, or "".
func dependencyCycle(svcs map[string]Service) string {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var found string
	var visit func(n string) bool
	visit = func(n string) bool {
		color[n] = grey
		stack = append(stack, n)
		for _, d := range sortedKeys(svcs[n].Composition.DependsOn) {
			if _, ok := svcs[d]; !ok || d == n {
				continue
			}
			switch color[d] {
			case grey:
				i := len(stack) - 1
				for stack[i] != d {
					i--
				}
				found = strings.Join(append(append([]string{}, stack[i:]...), d), " -> ")
				return true
			case white:
				if visit(d) {
					return true
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[n] = black
		return false
	}
	for _, n := range sortedKeys(svcs) {
		if color[n] == white && visit(n) {
			return found
		}
	}
	return ""
}

// NormalizeImage returns the canonical form of an image reference: full
// registry and repository, ":latest" when no tag or digest is given, and only
// the digest when both are given (the digest is what gets pulled).
func NormalizeImage(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("invalid reference %q: %v", ref, err)
	}
	if c, ok := named.(reference.Canonical); ok {
		d, err := reference.WithDigest(reference.TrimNamed(named), c.Digest())
		if err != nil {
			return "", fmt.Errorf("invalid reference %q: %v", ref, err)
		}
		return d.String(), nil
	}
	return reference.TagNameOnly(named).String(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
