package main

// This file holds the operator CLI's plumbing: login and the saved
// credentials, the client every operator command gets, argument checks.
// The commands themselves are in fleetcli_*.go; what they print is in
// fleetcli_format.go.

import (
	"bufio"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/clicfg"
	"reeve.dev/reeve/internal/serverapi"
)

// fleetCommands returns the operator commands, which talk to a fleet
// server's operator API.
func fleetCommands() []*cobra.Command {
	cmds := []*cobra.Command{
		fleetCmd(), keyCmd(), pushCmd(), releasesCmd(),
		devicesCmd(), deviceCmd(), varCmd(reeve.VarEnv), varCmd(reeve.VarConfig), logsCmd(),
	}
	for _, c := range cmds {
		c.PersistentFlags().String("server", "", "fleet server `URL` (default: $REEVE_SERVER, else the one reeve login saved)")
	}
	return append([]*cobra.Command{loginCmd()}, cmds...)
}

// operatorClient returns a client for the fleet server the user chose:
// --server, else $REEVE_SERVER, else the saved login; with $REEVE_TOKEN,
// else the saved token. The saved token is only sent to the server it
// was saved for.
func operatorClient(cmd *cobra.Command) (*serverapi.Client, error) {
	server, _ := cmd.Flags().GetString("server")
	if server == "" {
		server = os.Getenv("REEVE_SERVER")
	}
	token := os.Getenv("REEVE_TOKEN")
	var saved clicfg.Config
	if server == "" || token == "" {
		var err error
		if saved, err = clicfg.Load(); err != nil {
			return nil, err
		}
		if server == "" {
			server = saved.Server
		}
		if token == "" && saved.Server != "" && clicfg.NormalizeServer(server) == clicfg.NormalizeServer(saved.Server) {
			token = saved.Token
		}
	}
	if server != "" && token == "" && saved.Server != "" {
		// Logged in, but to another server than the one chosen.
		s := clicfg.NormalizeServer(server)
		return nil, fmt.Errorf("not logged in to %s: run `reeve login %s --token T` (or set REEVE_TOKEN)", s, s)
	}
	if server == "" || token == "" {
		return nil, errors.New("not logged in: run `reeve login URL --token T` (or set REEVE_SERVER and REEVE_TOKEN)")
	}
	return serverapi.NewClient(server, token, nil), nil
}

// withClient makes the RunE of an operator command: run gets a client for
// the chosen server, and a refused token comes back with what to do.
func withClient(run func(cmd *cobra.Command, c *serverapi.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := operatorClient(cmd)
		if err != nil {
			return err
		}
		err = run(cmd, c, args)
		if reeve.ErrorCode(err) == reeve.CodeUnauthorized {
			return fmt.Errorf("%w (log in again: reeve login %s --token T)", err, c.BaseURL())
		}
		return err
	}
}

func loginCmd() *cobra.Command {
	var token string
	cmd := &cobra.Command{
		Use:   "login URL --token T",
		Short: "Check an operator token against a fleet server and save both for the other commands",
		Long: `Check an operator token against a fleet server and save both, readable by
you only, in reeve/cli.json under your configuration directory
($XDG_CONFIG_HOME or ~/.config on Linux). Every operator command uses
them; REEVE_SERVER and REEVE_TOKEN override them (for automation), and
--server chooses another server.

The token is printed by the server's first start (or given to it with
--admin-token). --token - reads it from standard input, which keeps it
out of your shell history.`,
		Example: "  reeve login http://fleet.example:48400 --token 3f9a…\n  pass show reeve | reeve login https://fleet.example --token -",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			server, err := parseServerURL(args[0])
			if err != nil {
				return usageError{err}
			}
			if token == "-" {
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && line == "" {
					return usageError{fmt.Errorf("read the token from standard input: %w", err)}
				}
				token = line
			}
			token = strings.TrimSpace(token)
			if token == "" {
				return usageError{errors.New("--token is required: the operator token the server printed at its first start, or its --admin-token")}
			}
			who, err := serverapi.NewClient(server, token, nil).WhoAmI(cmd.Context())
			if err != nil {
				return fmt.Errorf("log in to %s: %w", server, err)
			}
			path, err := clicfg.Save(clicfg.Config{Server: server, Token: token})
			if err != nil {
				return err
			}
			name := who.Token.Name
			if name == "" {
				name = fmt.Sprintf("#%d", who.Token.ID)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s with token %s (server %s); saved in %s\n", server, name, who.Version, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "operator API token (- reads it from standard input)")
	return cmd
}

// parseServerURL checks a fleet server address ("host:port" or an http(s)
// URL) and returns it normalized.
func parseServerURL(s string) (string, error) {
	n := clicfg.NormalizeServer(s)
	u, err := url.Parse(n)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not a fleet server address: give a URL such as http://127.0.0.1:48400", s)
	}
	return n, nil
}

// exactArgs is cobra.ExactArgs with a usage error (exit status 2).
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{fmt.Errorf("%w: usage: %s", err, cmd.UseLine())}
		}
		return nil
	}
}

// groupCmd is a command that only holds others: run alone it prints its
// help; with an unknown subcommand it fails with exit status 2.
func groupCmd(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q: see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(subs...)
	return cmd
}

// required refuses an empty required flag with a usage error.
func required(flag, value string) error {
	if value == "" {
		return usageError{fmt.Errorf("--%s is required", flag)}
	}
	return nil
}

// splitAssignment splits KEY=VALUE; what names the thing for the error.
func splitAssignment(s, what string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	if !ok || key == "" {
		return "", "", usageError{fmt.Errorf("%q is not %s=VALUE", s, what)}
	}
	return key, value, nil
}
