// Package reeve holds the domain types shared by reeve's packages: the target
// state a device is driven to, the state a runtime reports, and errors that
// carry a code the HTTP layer maps in one table.
package reeve

import (
	"errors"
	"fmt"
	"strings"
)

// Error codes. The HTTP layer maps each to one status code.
const (
	CodeInvalid      = "invalid"
	CodeNotFound     = "not_found"
	CodeGone         = "gone" // existed, and is being removed
	CodeConflict     = "conflict"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeLocked       = "locked"
	CodeTooLarge     = "too_large"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
)

// Error is an error with a machine-readable code and a message meant for the
// person who has to fix it.
type Error struct {
	Code    string    `json:"code"`
	Message string    `json:"message"`
	Details []Problem `json:"details,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or
// CodeInternal when there is none.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var v *ValidationError
	if errors.As(err, &v) {
		return CodeInvalid
	}
	return CodeInternal
}

// Problem is one thing wrong with an input, at a dotted path such as
// apps.<uuid>.releases.<commit>.services.web.image.
type Problem struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError lists every problem found in an input. Nothing of an input
// that fails validation is applied.
type ValidationError struct {
	Problems []Problem
}

func (v *ValidationError) Error() string {
	parts := make([]string, len(v.Problems))
	for i, p := range v.Problems {
		parts[i] = p.String()
	}
	return strings.Join(parts, "; ")
}

// AsError converts a validation error to an *Error with code invalid, keeping
// each problem as a detail.
func (v *ValidationError) AsError() *Error {
	return &Error{Code: CodeInvalid, Message: v.Error(), Details: v.Problems}
}

// problems collects validation problems under a path prefix.
type problems struct {
	list []Problem
}

func (p *problems) add(path, format string, args ...any) {
	p.list = append(p.list, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &ValidationError{Problems: p.list}
}

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
