package compose

import (
	"errors"
	"regexp"
	"strings"

	"github.com/compose-spec/compose-go/v2/template"
)

// interpolator resolves ${VAR} references from the variables Load was given.
type interpolator struct {
	env map[string]string
}

func (in interpolator) lookup(name string) (string, bool) {
	v, ok := in.env[name]
	return v, ok
}

// resolve interpolates s. ok is false when s refers to a variable that is
// not set and has no default, or holds an invalid reference: checkVariables
// reports those.
func (in interpolator) resolve(s string) (string, bool) {
	if !strings.Contains(s, "$") {
		return s, true
	}
	out, missing, err := in.interpolate(s)
	return out, err == nil && len(missing) == 0
}

// substitute interpolates s, for values that passed checkVariables.
func (in interpolator) substitute(s string) string {
	out, _ := in.resolve(s)
	return out
}

// interpolate substitutes the variables of s and lists those that are not
// set and have no default.
func (in interpolator) interpolate(s string) (string, []string, error) {
	var missing []string
	out, err := template.SubstituteWithOptions(s, in.lookup, template.WithoutLogging,
		template.WithReplacementFunction(func(sub string, m template.Mapping, cfg *template.Config) (string, error) {
			out, applied, err := template.DefaultReplacementAppliedFunc(sub, m, cfg)
			if err == nil && !applied {
				if n := varNameRe.FindStringSubmatch(sub); n != nil {
					missing = append(missing, n[1])
				}
			}
			return out, err
		}))
	return out, missing, err
}

var varNameRe = regexp.MustCompile(`^\$\{?([_a-zA-Z][_a-zA-Z0-9]*)`)

// checkVariables reports every reference to a variable that is not set and
// has no default, and every malformed reference, at the path of the value
// that holds it. Compose itself would use an empty string; reeve refuses, as
// an empty image tag or port is never what was meant.
func (in interpolator) checkVariables(at string, v any, p *problems) {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(v) {
			if strings.HasPrefix(k, "x-") && extensionsAt(at) {
				continue // extension fields are not used; their uses are checked where they are merged
			}
			in.checkVariables(join(at, k), v[k], p)
		}
	case []any:
		for i, e := range v {
			in.checkVariables(index(at, i), e, p)
		}
	case string:
		if !strings.Contains(v, "$") {
			return
		}
		_, missing, err := in.interpolate(v)
		var req *template.MissingRequiredError
		var inv *template.InvalidTemplateError
		switch {
		case errors.As(err, &req):
			if req.Reason != "" {
				p.add(at, "variable %s is required: %s", req.Variable, req.Reason)
			} else {
				p.add(at, "variable %s is required and not set", req.Variable)
			}
		case errors.As(err, &inv):
			p.add(at, "invalid variable reference in %q: write a literal $ as $$", v)
		case err != nil:
			p.add(at, "%v", err)
		}
		seen := map[string]bool{}
		for _, name := range missing {
			if seen[name] {
				continue
			}
			seen[name] = true
			p.add(at, "variable %s is not set: set it, or give a default with ${%s:-default}", name, name)
		}
	}
}

// extensionsAt reports whether x- keys of the mapping at path are compose
// extension fields (the top level and each service) rather than user keys
// such as environment variable names.
func extensionsAt(path string) bool {
	if path == "" {
		return true
	}
	rest, ok := strings.CutPrefix(path, "services.")
	return ok && !strings.Contains(rest, ".") && !strings.Contains(rest, "[")
}
