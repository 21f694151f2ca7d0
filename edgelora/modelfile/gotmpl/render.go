// Renders an Ollama TEMPLATE body with Go's text/template, the way Ollama does in
// messages mode, so edgelora can prove a TEMPLATE equivalent to a Jinja chat template.
//
// stdin:  {"template": "...", "cases": [{"System": "...", "Messages": [{"Role": "...", "Content": "..."}]}]}
// stdout: {"outputs": ["..." | null], "errors": [null | "..."]}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"text/template"
	"time"
)

type message struct {
	Role      string
	Content   string
	Thinking  string
	Images    []string
	ToolCalls []any
	ToolName  string
}

type renderCase struct {
	System   string
	Messages []message
}

type request struct {
	Template string
	Cases    []renderCase
}

type response struct {
	Outputs []*string `json:"outputs"`
	Errors  []*string `json:"errors"`
}

// Functions Ollama adds to text/template; stubs keep templates that mention them parseable.
var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":      func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate":    func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string { return "any" },
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(3)
	}
	var resp response
	for _, c := range req.Cases {
		if c.Messages == nil {
			c.Messages = []message{}
		}
		values := map[string]any{
			"System":   c.System,
			"Messages": c.Messages,
			"Tools":    []any{},
			"Response": "",
			"Think":    false,
		}
		var b bytes.Buffer
		if err := tmpl.Execute(&b, values); err != nil {
			msg := err.Error()
			resp.Outputs = append(resp.Outputs, nil)
			resp.Errors = append(resp.Errors, &msg)
			continue
		}
		out := b.String()
		resp.Outputs = append(resp.Outputs, &out)
		resp.Errors = append(resp.Errors, nil)
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		os.Exit(4)
	}
}
