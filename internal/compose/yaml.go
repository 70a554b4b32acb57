package compose

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v4"
)

// parseYAML decodes the compose file for the checks that run before
// compose-go loads it: the key allowlist, variables, and the raw forms of
// ports and volumes. YAML errors are reported with their line.
func parseYAML(data []byte, p *problems) map[string]any {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var node yaml.Node
	if err := dec.Decode(&node); err != nil {
		if errors.Is(err, io.EOF) {
			p.add("", "the compose file is empty: declare the services to run under services")
		} else {
			addYAMLError(data, err, p)
		}
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		addYAMLError(data, err, p)
		return nil
	default:
		p.add("", "the compose file holds more than one YAML document (the second starts at line %d): put everything in one document", extra.Line)
		return nil
	}
	checkTags(&node, p)
	if p.any() {
		return nil
	}
	var v any
	if err := node.Decode(&v); err != nil {
		addYAMLError(data, err, p)
		return nil
	}
	if v == nil {
		p.add("", "the compose file is empty: declare the services to run under services")
		return nil
	}
	m, ok := stringKeys("", v, p).(map[string]any)
	if p.any() {
		return nil
	}
	if !ok {
		p.add("", "the compose file must be a YAML mapping with a services key, found %s", describe(v))
		return nil
	}
	return m
}

var (
	yamlOffsetRe  = regexp.MustCompile(`offset (\d+)`)
	yamlContextRe = regexp.MustCompile(`^while [^:]* at line \d+, column \d+: (line \d+.*)$`)
)

// addYAMLError reports a YAML error as one problem per error, each with a
// line number.
func addYAMLError(data []byte, err error, p *problems) {
	var le *yaml.LoadErrors
	if errors.As(err, &le) && len(le.Errors) > 0 {
		for _, e := range le.Errors {
			p.add("", "invalid YAML at line %d: %v", e.Line, e.Err)
		}
		return
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.Join(strings.Fields(msg), " ")
	// "while parsing a flow sequence at line 3, column 14: line 4: ...":
	// the context's line is counted from 0 by the YAML library, which reads
	// as a contradiction; keep the problem's own line.
	if m := yamlContextRe.FindStringSubmatch(msg); m != nil {
		msg = m[1]
	}
	if !strings.Contains(msg, "line ") {
		// Reader errors carry a byte offset; say which line it is on.
		if m := yamlOffsetRe.FindStringSubmatch(msg); m != nil {
			if off, err := strconv.Atoi(m[1]); err == nil && off >= 0 && off <= len(data) {
				msg = fmt.Sprintf("line %d: %s", bytes.Count(data[:off], []byte("\n"))+1, msg)
			}
		}
	}
	p.add("", "invalid YAML: %s", msg)
}

// checkTags refuses compose-go's merge tags: they only mean something when
// several compose files are merged, and reeve reads one.
func checkTags(n *yaml.Node, p *problems) {
	if n == nil {
		return
	}
	switch n.Tag {
	case "!reset", "!override":
		p.add("", "line %d: the %s tag only applies when several compose files are merged: remove it", n.Line, n.Tag)
	}
	if n.Kind == yaml.AliasNode {
		return // its target is checked where it is defined
	}
	for _, c := range n.Content {
		checkTags(c, p)
	}
}

// stringKeys returns v with every mapping as a map[string]any, reporting
// keys that are not strings.
func stringKeys(at string, v any, p *problems) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = stringKeys(join(at, k), e, p)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			s, ok := k.(string)
			if !ok {
				p.add(at, "key %v is not a string: quote it", k)
				continue
			}
			m[s] = stringKeys(join(at, s), e, p)
		}
		return m
	case []any:
		for i, e := range v {
			v[i] = stringKeys(index(at, i), e, p)
		}
		return v
	default:
		return v
	}
}

// describe names the YAML type of a decoded value for messages.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int64, uint64, float64:
		return "a number"
	default:
		return fmt.Sprintf("a %T", v)
	}
}
