package compose

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"reeve.dev/reeve"
)

// problems collects what is wrong with a compose file.
type problems struct {
	list []reeve.Problem
}

func (p *problems) add(path, format string, args ...any) {
	p.list = append(p.list, reeve.Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (p *problems) any() bool { return len(p.list) > 0 }

// err returns the problems, ordered by path, as a *reeve.ValidationError;
// nil when there are none.
func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	sort.SliceStable(p.list, func(i, j int) bool { return p.list[i].Path < p.list[j].Path })
	return &reeve.ValidationError{Problems: p.list}
}

// join appends dotted path parts.
func join(path string, parts ...string) string {
	for _, s := range parts {
		if path == "" {
			path = s
		} else {
			path += "." + s
		}
	}
	return path
}

// index appends a list index to a path.
func index(path string, i int) string {
	return fmt.Sprintf("%s[%d]", path, i)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var (
	// 'services[web].healthcheck.retries' cannot parse value as 'uint64': ...
	decodeErrRe = regexp.MustCompile(`^'([^']*)' (.+)$`)
	// error while interpolating services.web.ports.[].target: ...
	interpErrRe = regexp.MustCompile(`^error while interpolating (\S+): (.+)$`)
	// services.web.ports.[]: invalid ip address: nowhere
	colonErrRe = regexp.MustCompile(`^((?:services|networks|volumes|secrets|configs)[^\s:]*): (.+)$`)
	// services.web.ports.0 must be a string or number
	schemaErrRe = regexp.MustCompile(`^((?:services|networks|volumes|name|version|secrets|configs|jobs|models|include)(?:\.\S*)?) (.+)$`)
	bracketRe   = regexp.MustCompile(`\[([^\]]*)\]`)
	dotIndexRe  = regexp.MustCompile(`\.([0-9]+)(\.|$)`)
)

// addComposeError turns an error from compose-go into problems, one per line
// of its message, with the path compose-go names in reeve's dotted form.
func (p *problems) addComposeError(err error) {
	msg := err.Error()
	for _, prefix := range []string{
		"validating " + fileName + ": ",
		"failed to parse " + fileName + ": ",
	} {
		msg = strings.ReplaceAll(msg, prefix, "")
	}
	added := false
	for _, line := range strings.Split(msg, "\n") {
		line = strings.TrimSpace(line)
		line = strings.TrimSuffix(line, ": invalid compose project")
		if line == "" || strings.HasPrefix(line, "decoding failed due to the following error(s)") {
			continue
		}
		added = true
		if m := decodeErrRe.FindStringSubmatch(line); m != nil {
			p.add(bracketPath(m[1]), "%s", m[2])
			continue
		}
		if m := interpErrRe.FindStringSubmatch(line); m != nil {
			p.add(strings.ReplaceAll(m[1], ".[]", ""), "%s", m[2])
			continue
		}
		if m := colonErrRe.FindStringSubmatch(line); m != nil {
			p.add(numericPath(strings.ReplaceAll(m[1], ".[]", "")), "%s", m[2])
			continue
		}
		if m := schemaErrRe.FindStringSubmatch(line); m != nil {
			p.add(numericPath(m[1]), "%s", m[2])
			continue
		}
		p.add("", "%s", strings.TrimPrefix(line, "yaml: "))
	}
	if !added {
		p.add("", "%s", strings.TrimSpace(err.Error()))
	}
}

// bracketPath turns services[web].ports[0] into services.web.ports[0].
func bracketPath(s string) string {
	return bracketRe.ReplaceAllStringFunc(s, func(b string) string {
		inner := b[1 : len(b)-1]
		if _, err := strconv.Atoi(inner); err == nil {
			return b
		}
		return "." + inner
	})
}

// numericPath turns services.web.ports.0 into services.web.ports[0].
func numericPath(s string) string {
	for {
		n := dotIndexRe.ReplaceAllString(s, "[$1]$2")
		if n == s {
			return s
		}
		s = n
	}
}

// validatePrefix is where the release sits in the device target that
// validate builds.
const validatePrefix = "apps.compose.releases.compose"

// validate runs reeve's release validation and reports its problems with
// paths as they read in the compose file.
func validate(rel reeve.Release, portOrigin map[string][]int, p *problems) {
	dev := reeve.DeviceTarget{Apps: map[string]reeve.App{
		"compose": {Releases: map[string]reeve.Release{"compose": rel}},
	}}
	err := dev.Validate()
	if err == nil {
		return
	}
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) {
		p.add("", "%v", err)
		return
	}
	for _, pr := range ve.Problems {
		p.list = append(p.list, reeve.Problem{Path: composePath(pr.Path, rel, portOrigin), Message: pr.Message})
	}
}

// composePath rewrites a validation path
// (apps.compose.releases.compose.services.web.composition.ports[2]) to the
// path of the compose file (services.web.ports[1]).
func composePath(path string, rel reeve.Release, portOrigin map[string][]int) string {
	switch {
	case path == validatePrefix:
		return ""
	case strings.HasPrefix(path, validatePrefix+"."):
		path = strings.TrimPrefix(path, validatePrefix+".")
	default:
		return path
	}
	if !strings.HasPrefix(path, "services.") {
		return path
	}
	// Service names may hold dots: take the longest that matches.
	name := ""
	for n := range rel.Services {
		sp := "services." + n
		if (path == sp || strings.HasPrefix(path, sp+".")) && len(n) > len(name) {
			name = n
		}
	}
	if name == "" {
		return path
	}
	sp := "services." + name
	rest := strings.TrimPrefix(strings.TrimPrefix(path, sp), ".")
	switch {
	case rest == "composition":
		rest = ""
	case strings.HasPrefix(rest, "composition."):
		rest = strings.TrimPrefix(rest, "composition.")
	}
	if after, ok := strings.CutPrefix(rest, "ports["); ok {
		if i := strings.IndexByte(after, ']'); i > 0 {
			if n, err := strconv.Atoi(after[:i]); err == nil && n >= 0 && n < len(portOrigin[name]) {
				rest = index("ports", portOrigin[name][n]) + after[i+1:]
			}
		}
	}
	if rest == "" {
		return sp
	}
	return sp + "." + rest
}
