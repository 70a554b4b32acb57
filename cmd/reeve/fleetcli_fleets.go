package main

// Fleets, provisioning keys and releases.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"reeve.dev/reeve/internal/atomicfile"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/serverapi"
)

func fleetCmd() *cobra.Command {
	return groupCmd("fleet", "Create, list, pin and remove fleets",
		fleetCreateCmd(), fleetListCmd(), fleetRemoveCmd(), fleetPinCmd(), fleetTrackLatestCmd())
}

func fleetCreateCmd() *cobra.Command {
	var req serverapi.CreateFleetRequest
	cmd := &cobra.Command{
		Use:   "create NAME [--parent GATEWAY_FLEET]",
		Short: "Create a fleet, or with --parent a fleet of dependent devices",
		Long: `Create a fleet. With --parent, the fleet is one of dependent devices
(microcontrollers that run no agent): the agents of the parent fleet's
devices (gateways) register them and carry their firmware, which is a
release of this fleet: one service whose image holds it under /assets.`,
		Args: exactArgs(1),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			req.Name = args[0]
			f, err := c.CreateFleet(cmd.Context(), req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f.Dependent() {
				fmt.Fprintf(w, "created dependent fleet %s (id %d) under fleet %s: device type %s\n", f.Name, f.ID, req.Parent, f.DeviceType)
				fmt.Fprintf(w, "next: reeve push --fleet %s with one service whose image holds the firmware under /assets; the gateways of %s register its devices\n", f.Name, req.Parent)
				return nil
			}
			fmt.Fprintf(w, "created fleet %s (id %d): device type %s, update strategy %s\n", f.Name, f.ID, f.DeviceType, f.UpdateStrategy)
			fmt.Fprintf(w, "next: reeve key create --fleet %s, then reeve push --fleet %s\n", f.Name, f.Name)
			return nil
		}),
	}
	cmd.Flags().StringVar(&req.DeviceType, "type", "", "device type that may join (\"any\" accepts every type; default: the server's)")
	cmd.Flags().StringVar(&req.UpdateStrategy, "strategy", "", "update strategy for services whose labels choose none (default: download-then-kill)")
	cmd.Flags().StringVar(&req.Parent, "parent", "", "make a fleet of dependent devices, carried by the devices of this fleet (name or id)")
	return cmd
}

func fleetListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List fleets",
		Args:    exactArgs(0),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			fleets, err := c.Fleets(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printList(cmd.OutOrStdout(), fleets)
			}
			fleetTable(fleets, time.Now()).print(cmd.OutOrStdout(), "no fleets: create one with reeve fleet create NAME")
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func fleetRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a fleet with its keys, releases and variables (refused while it has devices or dependent fleets)",
		Args:  exactArgs(1),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			if err := c.DeleteFleet(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed fleet %s\n", args[0])
			return nil
		}),
	}
}

func fleetPinCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pin NAME COMMIT",
		Short: "Make every device of a fleet run one release (devices pinned themselves keep theirs)",
		Long: `Make every device of a fleet run one release, whatever is pushed later,
until ` + "`reeve fleet track-latest`" + `. Devices pinned with ` + "`reeve device pin`" + ` keep
their own release. The commits are listed by ` + "`reeve releases --fleet NAME`" + `.`,
		Args: exactArgs(2),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			commit := args[1]
			f, err := c.UpdateFleet(cmd.Context(), args[0], serverapi.UpdateFleetRequest{PinnedRelease: &commit})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "fleet %s is pinned to release %s\n", f.Name, f.PinnedRelease)
			return nil
		}),
	}
}

func fleetTrackLatestCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "track-latest NAME",
		Short: "Unpin a fleet: its devices run its newest release again",
		Args:  exactArgs(1),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			unpin := ""
			f, err := c.UpdateFleet(cmd.Context(), args[0], serverapi.UpdateFleetRequest{PinnedRelease: &unpin})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "fleet %s tracks its newest release\n", f.Name)
			return nil
		}),
	}
}

func keyCmd() *cobra.Command {
	return groupCmd("key", "Create, list and revoke provisioning keys, which let devices join a fleet",
		keyCreateCmd(), keyListCmd(), keyRevokeCmd())
}

// deviceConfig is the config.json a device is provisioned with.
type deviceConfig struct {
	APIEndpoint     string `json:"apiEndpoint"`
	ProvisioningKey string `json:"provisioningKey"`
	DeviceType      string `json:"deviceType,omitempty"`
}

func keyCreateCmd() *cobra.Command {
	var fleet, name, output string
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "create --fleet F",
		Short: "Create a provisioning key and print the config.json a device joins the fleet with",
		Long: `Create a provisioning key for a fleet and print it with the config.json a
device joins the fleet with. The key is shown only now: the server keeps
its hash. With --output the config.json is written to a file (readable by
you only) and the key is not printed.`,
		Args: exactArgs(0),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			if err := required("fleet", fleet); err != nil {
				return err
			}
			if expires < 0 {
				return usageError{fmt.Errorf("--expires %s is in the past: give a positive duration such as 720h, or 0 for never", expires)}
			}
			f, err := c.Fleet(cmd.Context(), fleet)
			if err != nil {
				return err
			}
			req := serverapi.CreateKeyRequest{Name: name}
			if expires > 0 {
				req.ExpiresAt = time.Now().Add(expires).UTC().Truncate(time.Second)
			}
			key, err := c.CreateKey(cmd.Context(), fleet, req)
			if err != nil {
				return err
			}
			cfg := deviceConfig{APIEndpoint: c.BaseURL(), ProvisioningKey: key.Key}
			if f.DeviceType != reeve.DeviceTypeAny {
				cfg.DeviceType = f.DeviceType
			}
			expiry := "never expires"
			if k := key.ProvisioningKey; !k.ExpiresAt.IsZero() {
				expiry = "expires " + k.ExpiresAt.UTC().Format(time.RFC3339)
			}
			w := cmd.OutOrStdout()
			if output != "" {
				var b bytes.Buffer
				if err := printJSON(&b, cfg); err != nil {
					return err
				}
				if err := atomicfile.Write(output, b.Bytes(), 0o600); err != nil {
					return fmt.Errorf("write the device's config.json: %w", err)
				}
				fmt.Fprintf(w, "wrote %s: a device with it joins fleet %s (provisioning key %d, %s)\n", output, f.Name, key.ProvisioningKey.ID, expiry)
				return nil
			}
			fmt.Fprintf(w, "provisioning key %d for fleet %s (%s); it is shown only now:\n\n  %s\n\n", key.ProvisioningKey.ID, f.Name, expiry, key.Key)
			fmt.Fprintf(w, "a device joins the fleet with this config.json:\n")
			return printJSON(w, cfg)
		}),
	}
	cmd.Flags().StringVar(&fleet, "fleet", "", "fleet name or id (required)")
	cmd.Flags().StringVar(&name, "name", "", "a name for the key, such as where it is used")
	cmd.Flags().DurationVar(&expires, "expires", 0, "how long the key works, such as 720h (default: until revoked)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the config.json to this file instead of printing it")
	return cmd
}

func keyListCmd() *cobra.Command {
	var fleet string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls --fleet F",
		Aliases: []string{"list"},
		Short:   "List a fleet's provisioning keys (their secrets are never shown again)",
		Args:    exactArgs(0),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			if err := required("fleet", fleet); err != nil {
				return err
			}
			keys, err := c.Keys(cmd.Context(), fleet)
			if err != nil {
				return err
			}
			if asJSON {
				return printList(cmd.OutOrStdout(), keys)
			}
			keyTable(keys, time.Now()).print(cmd.OutOrStdout(), "no provisioning keys: create one with reeve key create --fleet "+fleet)
			return nil
		}),
	}
	cmd.Flags().StringVar(&fleet, "fleet", "", "fleet name or id (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func keyRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a provisioning key: no device joins with it any more (those that did stay)",
		Args:  exactArgs(1),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || id <= 0 {
				return usageError{fmt.Errorf("%q is not a key id: see reeve key ls --fleet F", args[0])}
			}
			if err := c.RevokeKey(cmd.Context(), id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked provisioning key %d\n", id)
			return nil
		}),
	}
}

// composeFiles are the files push looks for when not given one, in order.
func composeFiles() []string {
	return []string{"docker-compose.yml", "docker-compose.yaml", "compose.yaml", "compose.yml"}
}

func pushCmd() *cobra.Command {
	var fleet, file string
	cmd := &cobra.Command{
		Use:   "push --fleet F [-f docker-compose.yml]",
		Short: "Validate a compose file and push it as a fleet's new release",
		Long: `Validate a compose file here, then push it as a release of a fleet: every
device of the fleet that is not pinned moves to it.

Without -f, push reads the first of docker-compose.yml, docker-compose.yaml,
compose.yaml and compose.yml in the current directory. The file is checked as
the server checks it: relative bind mounts and ${VARIABLES} without a default
are refused, since devices have neither this directory nor this environment.
A file with problems is not sent; every problem is printed (exit status 2).
Pushing the same file again changes nothing.`,
		Args: exactArgs(0),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			if err := required("fleet", fleet); err != nil {
				return err
			}
			if file == "" {
				var err error
				if file, err = findComposeFile(); err != nil {
					return err
				}
			}
			data, err := readInput(file)
			if err != nil {
				return usageError{err}
			}
			progress := cmd.ErrOrStderr()
			fmt.Fprintf(progress, "validating %s…\n", file)
			// The server validates with the same options: no working
			// directory and no environment.
			if _, err := compose.Load(cmd.Context(), data, compose.Options{ProjectName: fleet}); err != nil {
				if list, ok := problemList(err); ok {
					return usageError{fmt.Errorf("%s is not a valid release; nothing was pushed:%s", file, list)}
				}
				return err
			}
			fmt.Fprintf(progress, "uploading %d bytes to fleet %s…\n", len(data), fleet)
			rel, created, err := c.Push(cmd.Context(), fleet, data)
			if list, ok := problemList(err); ok {
				return usageError{fmt.Errorf("the server refused %s; nothing was pushed:%s", file, list)}
			}
			if err != nil {
				return err
			}
			services := plural(len(rel.Release.Services), "service")
			if names := serviceNames(rel.Release); names != "" {
				services += " (" + names + ")"
			}
			w := cmd.OutOrStdout()
			if created {
				fmt.Fprintf(w, "pushed release %s to fleet %s: %s\n", rel.Commit, fleet, services)
			} else {
				fmt.Fprintf(w, "release %s was already pushed to fleet %s: %s\n", rel.Commit, fleet, services)
			}
			// Advice only: the push is done whatever this answers.
			if f, err := c.Fleet(cmd.Context(), fleet); err == nil && f.PinnedRelease != "" && f.PinnedRelease != rel.Commit {
				fmt.Fprintf(w, "fleet %s is pinned to release %s: its devices move to this one after reeve fleet pin %s %s (or reeve fleet track-latest %s)\n",
					f.Name, f.PinnedRelease, f.Name, rel.Commit, f.Name)
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&fleet, "fleet", "", "fleet name or id (required)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "compose file (- for standard input; default: the first of "+fmt.Sprint(composeFiles())+")")
	return cmd
}

// findComposeFile returns the first of composeFiles in the current
// directory.
func findComposeFile() (string, error) {
	for _, name := range composeFiles() {
		if _, err := os.Stat(name); err == nil {
			return name, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("look for a compose file: %w", err)
		}
	}
	return "", usageError{fmt.Errorf("no compose file here (looked for %v): give one with -f", composeFiles())}
}

func releasesCmd() *cobra.Command {
	var fleet string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "releases --fleet F",
		Short: "List a fleet's releases, newest first",
		Args:  exactArgs(0),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			if err := required("fleet", fleet); err != nil {
				return err
			}
			rels, err := c.Releases(cmd.Context(), fleet)
			if err != nil {
				return err
			}
			if asJSON {
				return printList(cmd.OutOrStdout(), rels)
			}
			releaseTable(rels, time.Now()).print(cmd.OutOrStdout(), "no releases: push one with reeve push --fleet "+fleet)
			return nil
		}),
	}
	cmd.Flags().StringVar(&fleet, "fleet", "", "fleet name or id (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
