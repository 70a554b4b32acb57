package main

// Environment and config variables: `reeve env …` and `reeve config …`,
// one set of commands for both kinds.

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

func varCmd(kind string) *cobra.Command {
	short := "Set, list and remove the environment variables of a fleet's or a device's services"
	if kind == reeve.VarConfig {
		short = "Set, list and remove the config variables of a fleet or a device (they configure devices and agents)"
	}
	cmd := groupCmd(kind, short, varSetCmd(kind), varListCmd(kind), varRemoveCmd(kind))
	if kind == reeve.VarEnv {
		cmd.Long = short + `.

A variable belongs to one scope: a fleet (--fleet F) or a device (--device U,
its UUID or its first 7+ characters), and with --service S only to that
service of the fleet or device. A container gets, lowest precedence first:
the compose file's environment, then fleet, fleet+service, device and
device+service variables.`
	} else {
		cmd.Long = short + `.

A variable belongs to one scope: a fleet (--fleet F) or a device (--device U,
its UUID or its first 7+ characters). Device variables take precedence over
fleet ones. Config variables have no service scope.`
	}
	return cmd
}

// varScope holds the scope flags of a variable command.
type varScope struct {
	kind                   string
	fleet, device, service string
}

// addFlags adds the scope flags to cmd.
func (s *varScope) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.fleet, "fleet", "", "the variables of this fleet (name or id)")
	f.StringVar(&s.device, "device", "", "the variables of this device (UUID or its first 7+ characters)")
	f.StringVar(&s.service, "service", "", "only for this service of the fleet or device")
	if s.kind == reeve.VarConfig {
		_ = f.MarkHidden("service") // refused with a message, not as an unknown flag
	}
}

// check refuses, before any request, a scope the server would refuse.
func (s *varScope) check(cmd *cobra.Command) error {
	switch {
	case s.kind == reeve.VarConfig && cmd.Flags().Changed("service"):
		return usageError{errors.New("config variables have no service scope: drop --service (services have env variables)")}
	case s.fleet == "" && s.device == "":
		return usageError{errors.New("say whose variables: --fleet F or --device U")}
	case s.fleet != "" && s.device != "":
		return usageError{errors.New("give --fleet or --device, not both: a variable belongs to a fleet or to a device")}
	}
	return nil
}

// resolve returns the scope in the API's terms, with the device's whole
// UUID.
func (s *varScope) resolve(ctx context.Context, c *serverapi.Client) (serverapi.VarScope, error) {
	scope := serverapi.VarScope{Fleet: s.fleet, Service: s.service}
	if s.device != "" {
		uuid, err := resolveDevice(ctx, c, s.device)
		if err != nil {
			return scope, err
		}
		scope.Device = uuid
	}
	return scope, nil
}

// scopeText names a scope for people: "service web of fleet lobby".
func scopeText(s serverapi.VarScope) string {
	owner := "fleet " + s.Fleet
	if s.Device != "" {
		owner = "device " + short(s.Device, shortUUID)
	}
	if s.Service != "" {
		return "service " + s.Service + " of " + owner
	}
	return owner
}

// scopeArgs checks the number of arguments, then the scope flags, and
// then check (when not nil) on the arguments.
func scopeArgs(n int, s *varScope, check func(args []string) error) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := exactArgs(n)(cmd, args); err != nil {
			return err
		}
		if err := s.check(cmd); err != nil {
			return err
		}
		if check != nil {
			return check(args)
		}
		return nil
	}
}

func varSetCmd(kind string) *cobra.Command {
	s := &varScope{kind: kind}
	assignment := func(args []string) error {
		_, _, err := splitAssignment(args[0], "NAME")
		return err
	}
	cmd := &cobra.Command{
		Use:   "set NAME=VALUE (--fleet F | --device U)",
		Short: "Set one " + kind + " variable",
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			name, value, _ := splitAssignment(args[0], "NAME") // checked by Args
			scope, err := s.resolve(cmd.Context(), c)
			if err != nil {
				return err
			}
			req := serverapi.SetVarRequest{Fleet: scope.Fleet, Device: scope.Device, Service: scope.Service, Name: name, Value: value}
			if _, err := c.SetVar(cmd.Context(), kind, req); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "set %s %s for %s\n", kind, name, scopeText(scope))
			return nil
		}),
	}
	s.addFlags(cmd)
	cmd.Args = scopeArgs(1, s, assignment)
	if kind == reeve.VarEnv {
		cmd.Use += " [--service S]"
	}
	return cmd
}

func varListCmd(kind string) *cobra.Command {
	var asJSON bool
	s := &varScope{kind: kind}
	cmd := &cobra.Command{
		Use:     "ls (--fleet F | --device U)",
		Aliases: []string{"list"},
		Short:   "List the " + kind + " variables of exactly one scope",
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			scope, err := s.resolve(cmd.Context(), c)
			if err != nil {
				return err
			}
			vars, err := c.Vars(cmd.Context(), kind, scope)
			if err != nil {
				return err
			}
			if asJSON {
				return printList(cmd.OutOrStdout(), vars)
			}
			varTable(vars).print(cmd.OutOrStdout(), fmt.Sprintf("no %s variables for %s", kind, scopeText(scope)))
			return nil
		}),
	}
	s.addFlags(cmd)
	cmd.Args = scopeArgs(0, s, nil)
	if kind == reeve.VarEnv {
		cmd.Use += " [--service S]"
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func varRemoveCmd(kind string) *cobra.Command {
	s := &varScope{kind: kind}
	cmd := &cobra.Command{
		Use:   "rm NAME (--fleet F | --device U)",
		Short: "Remove one " + kind + " variable",
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			scope, err := s.resolve(cmd.Context(), c)
			if err != nil {
				return err
			}
			if err := c.DeleteVar(cmd.Context(), kind, scope, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s %s from %s\n", kind, args[0], scopeText(scope))
			return nil
		}),
	}
	s.addFlags(cmd)
	cmd.Args = scopeArgs(1, s, nil)
	if kind == reeve.VarEnv {
		cmd.Use += " [--service S]"
	}
	return cmd
}
