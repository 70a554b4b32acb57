// Package compose reads a compose file into a reeve.Release. It honours the
// part of the compose specification that reeve can apply on a device and
// refuses every other key, naming it, rather than dropping it.
//
// Parsing, interpolation, short-syntax expansion and schema validation are
// done by compose-spec/compose-go; this package checks the file against an
// allowlist first, maps the loaded project onto reeve's types and then runs
// reeve's own release validation, so that every problem is reported with a
// dotted path such as services.web.ports[0].
package compose

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"

	"reeve.dev/reeve"
)

// Options tells Load how to read a compose file.
type Options struct {
	// ProjectName is the compose project name (what ${COMPOSE_PROJECT_NAME}
	// expands to). Empty: the file's top-level name, else "reeve".
	ProjectName string
	// WorkingDir resolves relative bind sources such as ./data. Empty:
	// relative binds are refused.
	WorkingDir string
	// Env holds the variables the file is interpolated with, and where
	// environment entries without a value take theirs from. Nil: no
	// variables, so only ${VAR:-default} forms resolve.
	Env map[string]string
}

// fileName is the name compose-go reports errors against.
const fileName = "docker-compose.yml"

// defaultProjectName is used when neither Options nor the file name one.
const defaultProjectName = "reeve"

// Load parses a compose file (YAML bytes) into a reeve.Release, with variable
// interpolation from opts.Env. Every problem found is returned in one
// *reeve.ValidationError, each with a dotted path (services.web.build) and a
// message saying what to do. Load never panics on its input.
func Load(ctx context.Context, data []byte, opts Options) (rel reeve.Release, err error) {
	if err := ctx.Err(); err != nil {
		return reeve.Release{}, err
	}
	defer func() {
		// compose-go is not written to be fed hostile input; a panic in it
		// must not take the agent down.
		if r := recover(); r != nil {
			rel = reeve.Release{}
			err = &reeve.ValidationError{Problems: []reeve.Problem{{
				Message: fmt.Sprintf("cannot read the compose file: %v", r),
			}}}
		}
	}()

	var p problems
	doc := parseYAML(data, &p)
	if p.any() {
		return reeve.Release{}, p.err()
	}
	name := projectName(opts.ProjectName, doc, interpolator{env: opts.Env})
	in := interpolator{env: map[string]string{}}
	for k, v := range opts.Env {
		in.env[k] = v
	}
	in.env["COMPOSE_PROJECT_NAME"] = name // as compose-go sets it
	c := &checker{p: &p, resolve: in.resolve}
	c.document(doc)
	in.checkVariables("", doc, &p)
	if p.any() {
		return reeve.Release{}, p.err()
	}

	project, err := loadProject(ctx, data, name, opts)
	if err != nil {
		if ctx.Err() != nil {
			return reeve.Release{}, ctx.Err()
		}
		p.addComposeError(err)
		return reeve.Release{}, p.err()
	}

	conv := converter{p: &p, sub: in.substitute, workingDir: opts.WorkingDir, raw: doc}
	rel = conv.release(project)
	if p.any() {
		return reeve.Release{}, p.err()
	}
	validate(rel, conv.portOrigin, &p)
	if p.any() {
		return reeve.Release{}, p.err()
	}
	return rel, nil
}

// loadProject has compose-go parse, interpolate, validate against the
// compose schema and normalize the file. Paths are not resolved (relative
// binds are resolved against Options.WorkingDir when mapping) and the
// consistency checks are left to reeve's validation, which reports every
// problem with its path instead of the first one.
func loadProject(ctx context.Context, data []byte, name string, opts Options) (*types.Project, error) {
	env := make(map[string]string, len(opts.Env)+1)
	for k, v := range opts.Env {
		env[k] = v
	}
	details := types.ConfigDetails{
		WorkingDir:  opts.WorkingDir,
		ConfigFiles: []types.ConfigFile{{Filename: fileName, Content: data}},
		Environment: env,
	}
	return loader.LoadWithContext(ctx, details, func(o *loader.Options) {
		o.SetProjectName(name, true)
		o.ResolvePaths = false
		o.SkipConsistencyCheck = true
		o.SkipInclude = true
		o.SkipExtends = true
		o.SkipResolveLabels = true
		if o.Interpolate != nil {
			// Unset variables were refused already; keep compose-go from
			// logging about them on its own.
			o.Interpolate.Substitute = quietSubstitute
		}
	})
}

// projectName returns the project name compose would use: the one given,
// else the file's top-level name, else "reeve"; normalized as compose does.
func projectName(given string, doc map[string]any, in interpolator) string {
	if name := loader.NormalizeProjectName(given); name != "" {
		return name
	}
	if s, ok := doc["name"].(string); ok {
		if v, ok := in.resolve(s); ok {
			if name := loader.NormalizeProjectName(v); name != "" {
				return name
			}
		}
	}
	return defaultProjectName
}

func quietSubstitute(s string, m template.Mapping) (string, error) {
	return template.SubstituteWithOptions(s, m, template.WithoutLogging)
}

// Commit returns a stable short commit id for a compose file read in local
// mode: the first 16 hex digits of the SHA-256 of its bytes.
func Commit(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:16]
}

// ProjectName returns the name an app gets from a compose file as compose
// would name its project: the file's top-level name, else the name of the
// directory holding it, else "reeve"; normalized as compose does. Files that
// do not parse get the directory's name (Load reports their problems).
func ProjectName(data []byte, dir string, env map[string]string) string {
	var p problems
	doc := parseYAML(data, &p)
	if !p.any() {
		if s, ok := doc["name"].(string); ok {
			if v, ok := (interpolator{env: env}).resolve(s); ok {
				if name := loader.NormalizeProjectName(v); name != "" {
					return name
				}
			}
		}
	}
	if name := loader.NormalizeProjectName(filepath.Base(dir)); name != "" && name != "." {
		return name
	}
	return defaultProjectName
}
