package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/pb33f/jsonschema/v6"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi-validator/content"
	"github.com/pb33f/libopenapi-validator/schema_validation"
)

// The tests in this file keep api/openapi.json honest: it must describe
// exactly the routes the server registers, its schemas must match the Go
// types the handlers encode and decode, it must be a valid OpenAPI 3.1
// document, and real responses must conform to it.

type jsonObj = map[string]any

// loadSpec reads openapi.json and checks it is what the server serves.
func loadSpec(t *testing.T) jsonObj {
	t.Helper()
	raw, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, api.OpenAPI()) {
		t.Fatal("api.OpenAPI() differs from openapi.json")
	}
	var doc jsonObj
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if dec.More() {
		t.Fatal("openapi.json has trailing data")
	}
	return doc
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

type operation struct {
	method, path string
	op           jsonObj
	item         jsonObj
}

func operations(t *testing.T, doc jsonObj) []operation {
	t.Helper()
	paths, ok := doc["paths"].(jsonObj)
	if !ok {
		t.Fatal("no paths object")
	}
	var out []operation
	for p, v := range paths {
		item, ok := v.(jsonObj)
		if !ok {
			t.Fatalf("path %s is not an object", p)
		}
		for _, m := range httpMethods {
			if o, ok := item[m].(jsonObj); ok {
				out = append(out, operation{method: strings.ToUpper(m), path: p, op: o, item: item})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].method+" "+out[i].path < out[j].method+" "+out[j].path })
	return out
}

// resolve follows a local JSON reference ("#/components/schemas/KeyView").
func resolve(doc jsonObj, ref string) (any, error) {
	ptr, ok := strings.CutPrefix(ref, "#")
	if !ok {
		return nil, fmt.Errorf("%q is not a local reference", ref)
	}
	var cur any = doc
	if ptr == "" {
		return cur, nil
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, fmt.Errorf("%q is not a JSON pointer", ref)
	}
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case jsonObj:
			next, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("%q: no %q", ref, tok)
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("%q: bad index %q", ref, tok)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("%q: cannot descend into %T at %q", ref, cur, tok)
		}
	}
	return cur, nil
}

// deref follows $ref until it reaches an object without one.
func deref(t *testing.T, doc jsonObj, v any) jsonObj {
	t.Helper()
	for range 16 {
		o, ok := v.(jsonObj)
		if !ok {
			t.Fatalf("expected an object, got %T", v)
		}
		ref, ok := o["$ref"].(string)
		if !ok {
			return o
		}
		next, err := resolve(doc, ref)
		if err != nil {
			t.Fatal(err)
		}
		v = next
	}
	t.Fatal("$ref chain too long")
	return nil
}

// objectShape collects the properties and required names of an object
// schema, merging allOf members.
func objectShape(t *testing.T, doc jsonObj, s any) (props map[string]any, required map[string]bool) {
	t.Helper()
	props, required = map[string]any{}, map[string]bool{}
	var walk func(any)
	walk = func(v any) {
		o := deref(t, doc, v)
		for _, sub := range asSlice(o["allOf"]) {
			walk(sub)
		}
		if p, ok := o["properties"].(jsonObj); ok {
			for k, v := range p {
				props[k] = v
			}
		}
		for _, r := range asSlice(o["required"]) {
			required[r.(string)] = true
		}
	}
	walk(s)
	return props, required
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// schemaTypes returns a schema's "type" as a set.
func schemaTypes(t *testing.T, doc jsonObj, s any) map[string]bool {
	t.Helper()
	o := deref(t, doc, s)
	out := map[string]bool{}
	switch ty := o["type"].(type) {
	case string:
		out[ty] = true
	case []any:
		for _, x := range ty {
			out[x.(string)] = true
		}
	}
	if len(out) == 0 && len(asSlice(o["allOf"])) > 0 {
		return map[string]bool{"object": true}
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIDocumentIsOpenAPI31 checks the document parses and is 3.1.
func TestOpenAPIDocumentIsOpenAPI31(t *testing.T) {
	doc := loadSpec(t)
	v, _ := doc["openapi"].(string)
	if !regexp.MustCompile(`^3\.1\.\d+$`).MatchString(v) {
		t.Fatalf("openapi = %q, want 3.1.x", v)
	}
	info, _ := doc["info"].(jsonObj)
	if info["title"] == nil || info["version"] == nil {
		t.Fatal("info needs title and version")
	}
	raw, _ := os.ReadFile("openapi.json")
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, bytes.TrimSpace(raw), "", "  "); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(raw), pretty.Bytes()) {
		t.Error("openapi.json is not formatted with a 2-space indent")
	}
}

// TestOpenAPICoversEveryRoute checks that the document has exactly one
// operation for each registered route, and no others, with the route's
// permission, security and path parameters.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	doc := loadSpec(t)
	srv := api.New(api.Config{})
	routes := map[string]api.Route{}
	for _, r := range srv.Routes() {
		k := r.Method + " " + r.Pattern
		if _, dup := routes[k]; dup {
			t.Errorf("route %s registered twice", k)
		}
		routes[k] = r
	}
	// /metrics is served by the Prometheus handler and is not in the route
	// table; it is documented, so check here that it is really served.
	unlisted := map[string]bool{"GET /metrics": true}
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Errorf("GET /metrics: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}

	documented := map[string]bool{}
	opIDs := map[string]bool{}
	for _, o := range operations(t, doc) {
		k := o.method + " " + o.path
		documented[k] = true
		id, _ := o.op["operationId"].(string)
		if id == "" || opIDs[id] {
			t.Errorf("%s: operationId %q missing or not unique", k, id)
		}
		opIDs[id] = true
		if s, _ := o.op["summary"].(string); s == "" {
			t.Errorf("%s: no summary", k)
		}
		r, registered := routes[k]
		if !registered && !unlisted[k] {
			t.Errorf("%s is documented but not a registered route", k)
			continue
		}
		if perm, ok := o.op["x-required-permission"].(string); !ok || perm != r.Permission {
			t.Errorf("%s: x-required-permission = %v, the route needs %q", k, o.op["x-required-permission"], r.Permission)
		}
		// Everything under /v1 is authenticated (the document-wide bearer
		// requirement); the operational endpoints are public.
		sec, overridden := o.op["security"]
		if strings.HasPrefix(o.path, "/v1/") {
			if overridden {
				t.Errorf("%s: an authenticated route must not override security", k)
			}
		} else if !overridden || len(asSlice(sec)) != 0 {
			t.Errorf("%s: a public route needs \"security\": []", k)
		}
		checkPathParams(t, doc, o)
		checkResponses(t, doc, o)
	}
	for k := range routes {
		if !documented[k] {
			t.Errorf("route %s is not documented in openapi.json", k)
		}
	}
	for k := range unlisted {
		if _, ok := routes[k]; ok {
			t.Errorf("%s is now in the route table: drop it from the unlisted set", k)
		}
	}
}

var pathParamRE = regexp.MustCompile(`\{([^}]+)\}`)

func checkPathParams(t *testing.T, doc jsonObj, o operation) {
	t.Helper()
	want := map[string]bool{}
	for _, m := range pathParamRE.FindAllStringSubmatch(o.path, -1) {
		want[m[1]] = true
	}
	got := map[string]bool{}
	for _, list := range []any{o.item["parameters"], o.op["parameters"]} {
		for _, p := range asSlice(list) {
			po := deref(t, doc, p)
			if po["in"] == "path" {
				got[po["name"].(string)] = true
				if po["required"] != true {
					t.Errorf("%s %s: path parameter %v must be required", o.method, o.path, po["name"])
				}
			}
		}
	}
	if !reflect.DeepEqual(keys(want), keys(got)) {
		t.Errorf("%s %s: path parameters %v, documented %v", o.method, o.path, keys(want), keys(got))
	}
}

// checkResponses checks that error responses are problem documents and
// that authenticated routes document 401 and 403.
func checkResponses(t *testing.T, doc jsonObj, o operation) {
	t.Helper()
	rs, _ := o.op["responses"].(jsonObj)
	hasSuccess := false
	for status, r := range rs {
		code, err := strconv.Atoi(status)
		if err != nil {
			t.Errorf("%s %s: response %q is not a status code", o.method, o.path, status)
			continue
		}
		if code < 400 {
			hasSuccess = true
			continue
		}
		if o.path == "/readyz" {
			continue // a plain JSON readiness report, not a problem
		}
		ro := deref(t, doc, r)
		content, _ := ro["content"].(jsonObj)
		pj, ok := content["application/problem+json"].(jsonObj)
		if !ok || len(content) != 1 {
			t.Errorf("%s %s: %d must be application/problem+json only", o.method, o.path, code)
			continue
		}
		if s := deref(t, doc, pj["schema"]); s["properties"].(jsonObj)["code"] == nil {
			t.Errorf("%s %s: %d does not use the Problem schema", o.method, o.path, code)
		}
	}
	if !hasSuccess {
		t.Errorf("%s %s: no success response", o.method, o.path)
	}
	if strings.HasPrefix(o.path, "/v1/") {
		for _, s := range []string{"401", "403", "503"} {
			if rs[s] == nil {
				t.Errorf("%s %s: an authenticated route must document %s", o.method, o.path, s)
			}
		}
		if o.op["requestBody"] != nil {
			for _, s := range []string{"400", "413"} {
				if rs[s] == nil {
					t.Errorf("%s %s: a route with a body must document %s", o.method, o.path, s)
				}
			}
		}
	}
}

// TestOpenAPIRefsResolve checks that every $ref points at something and
// that every component is used.
func TestOpenAPIRefsResolve(t *testing.T) {
	doc := loadSpec(t)
	used := map[string]bool{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case jsonObj:
			if ref, ok := x["$ref"]; ok {
				s, ok := ref.(string)
				if !ok {
					t.Errorf("%s: $ref is not a string", path)
				} else if _, err := resolve(doc, s); err != nil {
					t.Errorf("%s: %v", path, err)
				} else {
					used[s] = true
				}
			}
			for k, c := range x {
				walk(path+"/"+k, c)
			}
		case []any:
			for i, c := range x {
				walk(fmt.Sprintf("%s/%d", path, i), c)
			}
		}
	}
	walk("#", doc)
	comps, _ := doc["components"].(jsonObj)
	for kind, v := range comps {
		if kind == "securitySchemes" {
			continue
		}
		for name := range v.(jsonObj) {
			if ref := "#/components/" + kind + "/" + name; !used[ref] {
				t.Errorf("%s is never used", ref)
			}
		}
	}
}

// goField is one JSON field of a Go struct, embedded structs flattened.
type goField struct {
	name     string
	optional bool // omitempty or omitzero
	typ      reflect.Type
}

func jsonFields(typ reflect.Type) []goField {
	var out []goField
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				out = append(out, jsonFields(ft)...)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		optional := slices.Contains(strings.Split(opts, ","), "omitempty") || slices.Contains(strings.Split(opts, ","), "omitzero")
		out = append(out, goField{name: name, optional: optional, typ: ft})
	}
	return out
}

var (
	timeType        = reflect.TypeFor[time.Time]()
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
	textMarshalType = reflect.TypeFor[encoding.TextMarshaler]()
)

// checkGoType compares a Go type with the schema that documents its JSON.
func checkGoType(t *testing.T, doc jsonObj, where string, typ reflect.Type, schema any, nullable bool) {
	t.Helper()
	types := schemaTypes(t, doc, schema)
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
		if nullable && !types["null"] {
			t.Errorf("%s: a pointer without omitempty can be null; the schema's type must include \"null\"", where)
		}
	}
	want := ""
	switch {
	case typ == rawMessageType:
		return // any JSON
	case typ == timeType:
		want = "string"
		if f, _ := deref(t, doc, schema)["format"].(string); f != "date-time" {
			t.Errorf("%s: a time needs format date-time, has %q", where, f)
		}
	case typ.Implements(textMarshalType) || reflect.PointerTo(typ).Implements(textMarshalType):
		want = "string"
	default:
		switch typ.Kind() {
		case reflect.String:
			want = "string"
		case reflect.Bool:
			want = "boolean"
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			want = "integer"
		case reflect.Float32, reflect.Float64:
			want = "number"
		case reflect.Slice, reflect.Array:
			want = "array"
		case reflect.Map, reflect.Struct:
			want = "object"
		default:
			t.Errorf("%s: no JSON mapping for %s", where, typ)
			return
		}
	}
	if !types[want] {
		t.Errorf("%s: Go %s is JSON %s, the schema says %v", where, typ, want, keys(types))
		return
	}
	s := deref(t, doc, schema)
	switch {
	case typ == timeType || want == "string" && typ.Kind() != reflect.String:
	case typ.Kind() == reflect.Slice || typ.Kind() == reflect.Array:
		if s["items"] == nil {
			t.Errorf("%s: array without items", where)
			return
		}
		checkGoType(t, doc, where+"[]", typ.Elem(), s["items"], false)
	case typ.Kind() == reflect.Map:
		if ap, ok := s["additionalProperties"].(jsonObj); ok {
			checkGoType(t, doc, where+"{}", typ.Elem(), ap, false)
		}
	case typ.Kind() == reflect.Struct:
		checkStruct(t, doc, where, typ, schema)
	}
}

// checkStruct compares a struct's JSON fields with an object schema:
// the same property names, required exactly when not omitempty, and
// matching types.
func checkStruct(t *testing.T, doc jsonObj, where string, typ reflect.Type, schema any) {
	t.Helper()
	props, required := objectShape(t, doc, schema)
	fields := jsonFields(typ)
	var goNames, goRequired, docRequired []string
	for _, f := range fields {
		goNames = append(goNames, f.name)
		if !f.optional {
			goRequired = append(goRequired, f.name)
		}
	}
	sort.Strings(goNames)
	sort.Strings(goRequired)
	docRequired = keys(required)
	if got := keys(props); !slices.Equal(got, goNames) {
		t.Errorf("%s: schema properties %v, Go %s has JSON fields %v", where, got, typ, goNames)
	}
	if !slices.Equal(docRequired, goRequired) {
		t.Errorf("%s: schema requires %v, Go %s always writes %v", where, docRequired, typ, goRequired)
	}
	for _, f := range fields {
		if p, ok := props[f.name]; ok {
			checkGoType(t, doc, where+"."+f.name, f.typ, p, !f.optional)
		}
	}
}

// TestOpenAPIResponseSchemasMatchGoTypes checks each response schema
// against the exported Go type the handlers encode.
func TestOpenAPIResponseSchemasMatchGoTypes(t *testing.T) {
	doc := loadSpec(t)
	types := map[string]reflect.Type{
		"KeyView":          reflect.TypeFor[api.KeyView](),
		"CreatedKey":       reflect.TypeFor[api.CreatedKey](),
		"KeyPage":          reflect.TypeFor[api.KeyPage](),
		"EventView":        reflect.TypeFor[api.EventView](),
		"RequestContext":   reflect.TypeFor[domain.RequestContext](),
		"VerifyResponse":   reflect.TypeFor[api.VerifyResponse](),
		"UsageResult":      reflect.TypeFor[api.UsageResult](),
		"UsageResponse":    reflect.TypeFor[api.UsageResponse](),
		"PrincipalView":    reflect.TypeFor[api.PrincipalView](),
		"CreatedPrincipal": reflect.TypeFor[api.CreatedPrincipal](),
		"RoleView":         reflect.TypeFor[api.RoleView](),
		"MeView":           reflect.TypeFor[api.MeView](),
		"Problem":          reflect.TypeFor[api.Problem](),
		"LogEntry":         reflect.TypeFor[api.LogEntry](),
		"LogPage":          reflect.TypeFor[api.LogPage](),
		"AlertView":        reflect.TypeFor[api.AlertView](),
		"AlertPage":        reflect.TypeFor[api.AlertPage](),
	}
	for name, typ := range types {
		s, err := resolve(doc, "#/components/schemas/"+name)
		if err != nil {
			t.Errorf("no schema for %s: %v", typ, err)
			continue
		}
		checkStruct(t, doc, name, typ, s)
	}
	// The enums are the domain's.
	enum := func(name string) []string {
		var out []string
		for _, v := range asSlice(deref(t, doc, jsonObj{"$ref": "#/components/schemas/" + name})["enum"]) {
			out = append(out, v.(string))
		}
		sort.Strings(out)
		return out
	}
	outcomes := slices.Clone(domain.Outcomes)
	sort.Strings(outcomes)
	if got := enum("OutcomeCode"); !slices.Equal(got, outcomes) {
		t.Errorf("OutcomeCode enum %v, domain.Outcomes %v", got, outcomes)
	}
	sevSchema := deref(t, doc, jsonObj{"$ref": "#/components/schemas/AlertView"})["properties"].(jsonObj)["severity"].(jsonObj)
	var sevs []string
	for _, v := range asSlice(sevSchema["enum"]) {
		sevs = append(sevs, v.(string))
	}
	if !slices.Equal(sevs, domain.Severities) {
		t.Errorf("AlertView.severity enum %v, domain.Severities %v", sevs, domain.Severities)
	}
	var statuses []string
	for _, s := range enum("KeyStatus") {
		if _, ok := domain.ParseStatus(s); !ok {
			t.Errorf("KeyStatus %q is not a domain status", s)
		}
		statuses = append(statuses, s)
	}
	for _, s := range []domain.Status{domain.StatusActive, domain.StatusDisabled, domain.StatusExpired, domain.StatusRevoked, domain.StatusDeleted} {
		if !slices.Contains(statuses, string(s)) {
			t.Errorf("KeyStatus enum lacks %q", s)
		}
	}
}

// apiSource is what the tests learn from the api package's source: the
// request structs and which handler decodes which.
type apiSource struct {
	structs  map[string]*ast.StructType
	routes   map[string]string // "METHOD pattern" -> handler method name
	handlers map[string]*ast.FuncDecl
}

func parseAPISource(t *testing.T) apiSource {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	src := apiSource{structs: map[string]*ast.StructType{}, routes: map[string]string{}, handlers: map[string]*ast.FuncDecl{}}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				for _, sp := range d.Specs {
					if ts, ok := sp.(*ast.TypeSpec); ok {
						if st, ok := ts.Type.(*ast.StructType); ok {
							src.structs[ts.Name.Name] = st
						}
					}
				}
			case *ast.FuncDecl:
				if d.Recv != nil {
					src.handlers[d.Name.Name] = d
				}
			}
		}
	}
	routesFn := src.handlers["routes"]
	if routesFn == nil {
		t.Fatal("no (*Server).routes in the api package")
	}
	ast.Inspect(routesFn.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		switch {
		case (sel.Sel.Name == "handle" || sel.Sel.Name == "handleBatched") && len(call.Args) == 4:
		case sel.Sel.Name == "public" && len(call.Args) == 3:
		default:
			return true
		}
		method, err1 := stringLit(call.Args[0])
		pattern, err2 := stringLit(call.Args[1])
		h, ok := call.Args[len(call.Args)-1].(*ast.SelectorExpr)
		if err1 != nil || err2 != nil || !ok {
			t.Errorf("cannot read route registration at %s", fset.Position(call.Pos()))
			return true
		}
		src.routes[method+" "+pattern] = h.Sel.Name
		return true
	})
	return src
}

func stringLit(e ast.Expr) (string, error) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", fmt.Errorf("not a string literal")
	}
	return strconv.Unquote(lit.Value)
}

type bodyUse struct {
	typ      string // struct type name, or "struct{}"
	optional bool   // decodeOptional: the body may be absent
}

// bodies finds the decode and decodeOptional calls in a handler, closures
// included, and the type each decodes into.
func (src apiSource) bodies(t *testing.T, fn *ast.FuncDecl) []bodyUse {
	t.Helper()
	vars := map[string]string{}
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			if id, ok := n.Type.(*ast.Ident); ok {
				for _, name := range n.Names {
					vars[name.Name] = id.Name
				}
			}
		case *ast.AssignStmt:
			for i, rhs := range n.Rhs {
				if cl, ok := rhs.(*ast.CompositeLit); ok && i < len(n.Lhs) {
					if id, ok := cl.Type.(*ast.Ident); ok {
						vars[n.Lhs[i].(*ast.Ident).Name] = id.Name
					}
				}
			}
		}
		return true
	})
	var out []bodyUse
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		id, ok := call.Fun.(*ast.Ident)
		if !ok || (id.Name != "decode" && id.Name != "decodeOptional") || len(call.Args) != 2 {
			return true
		}
		use := bodyUse{optional: id.Name == "decodeOptional"}
		arg := call.Args[1]
		if u, ok := arg.(*ast.UnaryExpr); ok && u.Op == token.AND {
			arg = u.X
		}
		switch x := arg.(type) {
		case *ast.Ident:
			use.typ = vars[x.Name]
		case *ast.CompositeLit:
			if st, ok := x.Type.(*ast.StructType); ok && len(st.Fields.List) == 0 {
				use.typ = "struct{}"
			} else if id, ok := x.Type.(*ast.Ident); ok {
				use.typ = id.Name
			}
		}
		if use.typ == "" {
			t.Errorf("%s: cannot tell what a %s call decodes into", fn.Name.Name, id.Name)
		}
		out = append(out, use)
		return true
	})
	return out
}

// astJSONType is the JSON type of a struct field's Go type expression.
func astJSONType(e ast.Expr) (string, ast.Expr) {
	switch x := e.(type) {
	case *ast.StarExpr:
		return astJSONType(x.X)
	case *ast.ArrayType:
		return "array", x.Elt
	case *ast.MapType:
		return "object", x.Value
	case *ast.SelectorExpr:
		if id, ok := x.X.(*ast.Ident); ok && id.Name == "time" && x.Sel.Name == "Time" {
			return "string", nil
		}
	case *ast.Ident:
		switch x.Name {
		case "string":
			return "string", nil
		case "bool":
			return "boolean", nil
		case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
			return "integer", nil
		case "float32", "float64":
			return "number", nil
		}
	}
	return "", nil
}

// TestOpenAPIRequestBodiesMatchHandlers reads the api package's source to
// find, for every route, whether its handler decodes a body, whether the
// body may be omitted and which struct it decodes into; the documented
// requestBody must say the same, and its schema's properties must be the
// struct's JSON fields with matching types (request structs are
// unexported, so reflection cannot reach them from this package).
func TestOpenAPIRequestBodiesMatchHandlers(t *testing.T) {
	doc := loadSpec(t)
	src := parseAPISource(t)
	registered := map[string]bool{}
	for _, r := range api.New(api.Config{}).Routes() {
		registered[r.Method+" "+r.Pattern] = true
	}
	if !reflect.DeepEqual(keys(registered), keys(src.routes)) {
		t.Fatalf("routes read from server.go %v differ from Routes() %v", keys(src.routes), keys(registered))
	}
	documentedTypes := map[string]bool{}
	for name, s := range deref(t, doc, jsonObj{"$ref": "#/components"})["schemas"].(jsonObj) {
		if gt, ok := s.(jsonObj)["x-go-type"].(string); ok {
			documentedTypes[gt] = true
			checkRequestSchema(t, doc, src, name, gt)
		}
	}
	for name := range src.structs {
		if strings.HasSuffix(name, "Request") && !documentedTypes[name] {
			t.Errorf("request struct %s has no schema (x-go-type) in openapi.json", name)
		}
	}
	for _, o := range operations(t, doc) {
		k := o.method + " " + o.path
		hname, ok := src.routes[k]
		if !ok {
			continue // reported by TestOpenAPICoversEveryRoute
		}
		fn := src.handlers[hname]
		if fn == nil {
			t.Errorf("%s: handler %s not found", k, hname)
			continue
		}
		uses := src.bodies(t, fn)
		rb, hasBody := o.op["requestBody"]
		if len(uses) == 0 {
			if hasBody {
				t.Errorf("%s: documents a request body, but %s decodes none", k, hname)
			}
			continue
		}
		for _, u := range uses[1:] {
			if u != uses[0] {
				t.Errorf("%s: %s decodes bodies of different kinds %v", k, hname, uses)
			}
		}
		if !hasBody {
			t.Errorf("%s: %s decodes a %s body that is not documented", k, hname, uses[0].typ)
			continue
		}
		rbo := deref(t, doc, rb)
		if req, _ := rbo["required"].(bool); req == uses[0].optional {
			t.Errorf("%s: requestBody.required = %v, but the handler uses %s", k, req, map[bool]string{true: "decodeOptional", false: "decode"}[uses[0].optional])
		}
		content, _ := rbo["content"].(jsonObj)
		mt, ok := content["application/json"].(jsonObj)
		if !ok || len(content) != 1 {
			t.Errorf("%s: the request body must be application/json only", k)
			continue
		}
		s := deref(t, doc, mt["schema"])
		if gt, _ := s["x-go-type"].(string); gt != uses[0].typ {
			t.Errorf("%s: body schema is for %q, the handler decodes %q", k, gt, uses[0].typ)
		}
	}
}

func checkRequestSchema(t *testing.T, doc jsonObj, src apiSource, name, goType string) {
	t.Helper()
	s := deref(t, doc, jsonObj{"$ref": "#/components/schemas/" + name})
	if s["additionalProperties"] != false {
		t.Errorf("%s: unknown fields are rejected, so it needs additionalProperties: false", name)
	}
	props, required := objectShape(t, doc, s)
	if goType == "struct{}" {
		if len(props) != 0 {
			t.Errorf("%s: documents %v, but the handler decodes struct{}", name, keys(props))
		}
		return
	}
	st := src.structs[goType]
	if st == nil {
		t.Errorf("%s: x-go-type %s is not a struct of the api package", name, goType)
		return
	}
	fields := map[string]ast.Expr{}
	for _, f := range st.Fields.List {
		if len(f.Names) == 0 {
			t.Errorf("%s: embedded fields in %s are not supported by this test", name, goType)
			continue
		}
		tag := ""
		if f.Tag != nil {
			v, _ := strconv.Unquote(f.Tag.Value)
			tag = reflect.StructTag(v).Get("json")
		}
		jn, _, _ := strings.Cut(tag, ",")
		for _, n := range f.Names {
			if !n.IsExported() || tag == "-" {
				continue
			}
			fn := jn
			if fn == "" {
				fn = n.Name
			}
			fields[fn] = f.Type
		}
	}
	if got, want := keys(props), keys(fields); !slices.Equal(got, want) {
		t.Errorf("%s: schema properties %v, %s has JSON fields %v", name, got, goType, want)
	}
	for r := range required {
		if _, ok := fields[r]; !ok {
			t.Errorf("%s: requires %q, which %s does not have", name, r, goType)
		}
	}
	for fname, expr := range fields {
		p, ok := props[fname]
		if !ok {
			continue
		}
		jt, elem := astJSONType(expr)
		if jt == "" {
			t.Errorf("%s.%s: cannot map Go type %T to JSON", name, fname, expr)
			continue
		}
		if types := schemaTypes(t, doc, p); !types[jt] {
			t.Errorf("%s.%s: Go field is JSON %s, the schema says %v", name, fname, jt, keys(types))
		}
		if jt == "array" && elem != nil {
			et, _ := astJSONType(elem)
			items := deref(t, doc, p)["items"]
			if id, ok := elem.(*ast.Ident); ok && et == "" && src.structs[id.Name] != nil {
				// A list of request structs: its items are that struct's schema.
				if gt, _ := deref(t, doc, items)["x-go-type"].(string); gt != id.Name {
					t.Errorf("%s.%s: items must be the schema of %s, not %q", name, fname, id.Name, gt)
				}
				continue
			}
			if items == nil || !schemaTypes(t, doc, items)[et] {
				t.Errorf("%s.%s: items must be %s", name, fname, et)
			}
		}
	}
}

// TestOpenAPIValidatesAsOpenAPI31 validates the document against the
// OpenAPI 3.1 schema and builds a full model of it.
func TestOpenAPIValidatesAsOpenAPI31(t *testing.T) {
	d, err := libopenapi.NewDocument(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	if v := d.GetSpecInfo().Version; !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("libopenapi reads version %q", v)
	}
	ok, errs := schema_validation.ValidateOpenAPIDocument(d)
	for _, e := range errs {
		t.Errorf("%s", describe(e.Message, e.Reason, e.Context, e.SchemaValidationErrors))
	}
	if !ok && len(errs) == 0 {
		t.Error("the document is invalid")
	}
	if _, err := d.BuildV3Model(); err != nil {
		t.Errorf("build model: %v", err)
	}
	if _, errs := validator.NewValidator(d); len(errs) > 0 {
		t.Errorf("validator: %v", errs)
	}

	// The OpenAPI 3.1 schema leaves the JSON Schemas inside the document
	// to their own dialect: compile each against JSON Schema 2020-12.
	root, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OpenAPI()))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	const base = "mem:///openapi.json"
	if err := c.AddResource(base, root); err != nil {
		t.Fatal(err)
	}
	var ptrs []string
	var walk func(ptr string, v any, inSchemas bool)
	walk = func(ptr string, v any, inSchemas bool) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				p := ptr + "/" + strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
				switch {
				case inSchemas || k == "schema":
					ptrs = append(ptrs, p) // walk no further: compiling covers subschemas
				case k == "schemas" && ptr == "/components":
					walk(p, c, true)
				default:
					walk(p, c, false)
				}
			}
		case []any:
			for i, c := range x {
				walk(fmt.Sprintf("%s/%d", ptr, i), c, false)
			}
		}
	}
	walk("", root, false)
	if len(ptrs) < 20 {
		t.Fatalf("found only %d schemas", len(ptrs))
	}
	for _, p := range ptrs {
		if _, err := c.Compile(base + "#" + p); err != nil {
			t.Errorf("schema %s: %v", p, err)
		}
	}
}

func describe(msg, reason string, ctx any, details any) string {
	return fmt.Sprintf("%s: %s (%v) %+v", msg, reason, ctx, details)
}

// TestDocsPageIsSelfContained checks /docs needs nothing from outside.
func TestDocsPageIsSelfContained(t *testing.T) {
	srv := api.New(api.Config{})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/docs", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /docs: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	page := rec.Body.String()
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`(?i)<script[^>]*\bsrc\s*=`),
		regexp.MustCompile(`(?i)<link[^>]*\bhref\s*=\s*["']?(https?:)?//`),
		regexp.MustCompile(`(?i)<(img|iframe)[^>]*\bsrc\s*=\s*["']?(https?:)?//`),
		regexp.MustCompile(`(?i)@import`),
		regexp.MustCompile(`(?i)url\(\s*["']?(https?:)?//`),
	} {
		if m := re.FindString(page); m != "" {
			t.Errorf("docs.html loads something from outside: %q", m)
		}
	}
	if !strings.Contains(page, "openapi.json") {
		t.Error("docs.html does not read openapi.json")
	}
	// The static guide's tables of built-in roles and outcome codes are
	// the domain's.
	codeRE := regexp.MustCompile(`<code>([^<]+)</code>`)
	roles := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?s)<tr data-role="([^"]+)">(.*?)</tr>`).FindAllStringSubmatch(page, -1) {
		role := m[1]
		roles[role] = true
		var perms []string
		for _, c := range codeRE.FindAllStringSubmatch(m[2], -1) {
			if c[1] != role {
				perms = append(perms, c[1])
			}
		}
		want := slices.Clone(domain.BuiltinRoles[role])
		sort.Strings(perms)
		sort.Strings(want)
		if !slices.Equal(perms, want) {
			t.Errorf("docs.html: role %s has %v, the domain gives it %v", role, perms, want)
		}
	}
	if got, want := keys(roles), keys(domain.BuiltinRoles); !slices.Equal(got, want) {
		t.Errorf("docs.html lists roles %v, the domain has %v", got, want)
	}
	var outcomes []string
	for _, m := range regexp.MustCompile(`<tr data-outcome="([^"]+)">`).FindAllStringSubmatch(page, -1) {
		outcomes = append(outcomes, m[1])
	}
	want := slices.Clone(domain.Outcomes)
	sort.Strings(outcomes)
	sort.Strings(want)
	if !slices.Equal(outcomes, want) {
		t.Errorf("docs.html lists outcomes %v, the domain has %v", outcomes, want)
	}
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/openapi.json", nil))
	if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), api.OpenAPI()) {
		t.Fatalf("GET /openapi.json: %d", rec.Code)
	}
}

// TestOpenAPIResponsesConform drives every route through a real node and
// validates each request it sends and each response it gets against the
// document: status codes, content types, headers and bodies.
func TestOpenAPIResponsesConform(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	h := mustStart(t)
	c := newConformance(t, h)
	call, decode := c.call, c.decode
	root := h.root

	// Operations, identity, roles and principals.
	call("GET", "/healthz", "", nil, 200, true)
	call("GET", "/readyz", "", nil, 200, true)
	call("GET", "/openapi.json", "", nil, 200, true)
	call("GET", "/docs", "", nil, 200, true)
	call("GET", "/metrics", "", nil, 200, true)
	call("GET", "/v1/me", root, nil, 200, true)
	call("GET", "/v1/roles", root, nil, 200, true)
	call("POST", "/v1/roles", root, jsonObj{"name": "orders", "permissions": []string{"orders.read", "orders.write"}, "description": "orders"}, 201, true)
	call("PUT", "/v1/roles/orders", root, jsonObj{"permissions": []string{"orders.read", "orders.write", "orders.admin"}}, 200, true)
	call("POST", "/v1/roles", root, jsonObj{"name": "scratch", "permissions": []string{"x.y"}}, 201, true)
	call("DELETE", "/v1/roles/scratch", root, nil, 204, true)
	call("POST", "/v1/roles", root, jsonObj{"name": "orders"}, 409, true)
	call("PUT", "/v1/roles/superadmin", root, jsonObj{"permissions": []string{"*"}}, 409, true)
	call("DELETE", "/v1/roles/nope", root, nil, 404, true)

	var admin api.CreatedPrincipal
	decode(call("POST", "/v1/principals", root, jsonObj{"name": "payments", "roles": []string{"key-admin", "orders"}, "max_keys": 10, "credential_lifetime_days": 30}, 201, true), &admin)
	var ver api.CreatedPrincipal
	decode(call("POST", "/v1/principals", root, jsonObj{"name": "gateway", "roles": []string{"verifier"}}, 201, true), &ver)
	pid := "/v1/principals/" + ver.ID
	call("GET", "/v1/principals", root, nil, 200, true)
	call("GET", pid, root, nil, 200, true)
	call("PATCH", pid, root, jsonObj{"name": "edge gateway"}, 200, true)
	call("POST", pid+"/disable", root, jsonObj{"reason": "maintenance"}, 200, true)
	call("POST", pid+"/disable", root, nil, 409, true)
	call("POST", pid+"/enable", root, nil, 200, true)
	call("POST", pid+"/enable", root, jsonObj{}, 409, true)
	call("GET", "/v1/principals/"+uuid.NewString(), root, nil, 404, true)
	call("POST", "/v1/principals", root, jsonObj{"name": "x", "roles": []string{"nope"}}, 400, true)
	call("GET", "/v1/principals", admin.Credential.Token, nil, 403, true)

	// Keys.
	adm := admin.Credential.Token
	var k api.CreatedKey
	decode(call("POST", "/v1/keys", adm, jsonObj{
		"name": "checkout", "comments": "prod", "permissions": []string{"orders.read"}, "lifetime_days": 30,
		"allowed_ips": []string{"10.20.0.0/16", "203.0.113.7"}, "metadata": map[string]string{"ticket": "PAY-1"},
	}, 201, true), &k)
	call("POST", "/v1/keys", adm, jsonObj{"name": "by role", "role": "orders"}, 201, true)
	call("POST", "/v1/keys", adm, jsonObj{"name": "same as mine"}, 201, true)
	var page api.KeyPage
	decode(call("GET", "/v1/keys?status=active&limit=2&q=", adm, nil, 200, true), &page)
	if page.NextCursor == "" {
		t.Fatal("expected a next page")
	}
	call("GET", "/v1/keys?limit=2&cursor="+page.NextCursor, adm, nil, 200, true)
	call("GET", "/v1/keys?status=all&owner="+admin.ID, root, nil, 200, true)
	call("GET", "/v1/keys?status=sleeping", adm, nil, 400, false)
	kp := "/v1/keys/" + k.KeyID
	call("GET", kp, adm, nil, 200, true)
	call("GET", kp, root, nil, 200, true)
	call("PATCH", kp, adm, jsonObj{"comments": "prod, team payments", "permissions": []string{"orders.read", "orders.write"}}, 200, true)
	call("PATCH", kp, adm, jsonObj{}, 400, true)
	call("POST", kp+"/regenerate", adm, nil, 200, true)
	var rotated api.CreatedKey
	decode(call("POST", kp+"/regenerate", adm, jsonObj{"rotate": true, "grace_period": "1h"}, 200, true), &rotated)
	if rotated.Token == "" || rotated.RotationGraceEnd == nil {
		t.Fatalf("rotation answered %+v", rotated)
	}
	call("POST", kp+"/disable", adm, jsonObj{"reason": "investigating"}, 200, true)
	call("POST", kp+"/disable", adm, nil, 409, true)
	call("POST", kp+"/enable", adm, jsonObj{}, 200, true)
	call("GET", kp+"/events", adm, nil, 200, true)
	call("GET", kp+"/events", root, nil, 200, true)

	// Verification.
	vt := ver.Credential.Token
	call("POST", "/v1/verify", vt, jsonObj{"token": rotated.Token, "permission": "orders.read", "ip": "10.20.3.4"}, 200, true)
	call("POST", "/v1/verify", vt, jsonObj{"token": k.Token, "ip": "203.0.113.7"}, 200, true) // previous secret, in grace
	call("POST", "/v1/verify", vt, jsonObj{"token": rotated.Token, "ip": "192.0.2.1"}, 200, true)
	call("POST", "/v1/verify", vt, jsonObj{"token": rotated.Token, "permission": "orders.delete", "ip": "10.20.3.4"}, 200, true)
	call("POST", "/v1/verify", vt, jsonObj{"token": "klk_nope"}, 200, true)
	call("POST", "/v1/verify", vt, jsonObj{"token": "x", "ip": "not an ip"}, 400, true)
	call("POST", "/v1/verify", adm, jsonObj{"token": rotated.Token}, 403, true)
	call("POST", "/v1/usage", vt, jsonObj{"records": []jsonObj{
		{"record_id": "r1", "key_id": k.KeyID, "outcome": "VALID", "source_ip": "10.20.3.4", "permission": "orders.read",
			"request_id": "req-1", "endpoint": "GET /orders", "http_status": 200, "units": 3},
		{"record_id": "r2", "key_id": uuid.NewString(), "outcome": "VALID"},
	}}, 200, true)
	call("POST", "/v1/usage", vt, jsonObj{"records": []jsonObj{}}, 400, false)
	call("POST", "/v1/usage", adm, jsonObj{"records": []jsonObj{{"record_id": "r1", "key_id": k.KeyID, "outcome": "VALID"}}}, 403, true)

	// Revoke, delete and the errors around them.
	call("POST", kp+"/revoke", adm, jsonObj{"reason": "rotated out"}, 200, true)
	call("POST", kp+"/revoke", adm, jsonObj{"reason": "again"}, 409, true)
	call("POST", kp+"/enable", adm, nil, 409, true)
	call("DELETE", kp, adm, jsonObj{"reason": "cleanup"}, 200, true)
	call("DELETE", kp, adm, nil, 409, true)
	call("GET", kp, adm, nil, 200, true)
	call("GET", "/v1/keys/"+uuid.NewString(), adm, nil, 404, true)
	call("POST", "/v1/keys", root, jsonObj{"name": "superadmin may not"}, 403, true)
	call("POST", "/v1/keys", adm, `{"name":`, 400, false)
	call("POST", "/v1/keys", adm, `{"name":"a","secret":"x"}`, 400, false)
	call("POST", "/v1/keys", adm, `{"name":"`+strings.Repeat("x", api.MaxBodyBytes)+`"}`, 413, false)
	call("GET", "/v1/keys", "", nil, 401, false)
	call("GET", "/v1/me", "klk_not_a_token", nil, 401, false)

	for _, s := range []string{"GET 200", "POST 200", "POST 201", "DELETE 204", "POST 400", "GET 401", "POST 403", "GET 404", "POST 409", "POST 413"} {
		if !c.seen[s] {
			t.Errorf("no %s was exercised", s)
		}
	}
}

// conformance sends requests to a harness and validates them and their
// responses against the document.
type conformance struct {
	t    *testing.T
	h    *harness
	v    validator.Validator
	seen map[string]bool // "METHOD status" exercised
}

func newConformance(t *testing.T, h *harness) *conformance {
	t.Helper()
	d, err := libopenapi.NewDocument(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	// An NDJSON export is documented as text (OpenAPI 3.1 cannot say "a
	// stream of LogEntry"); its lines are checked by the test itself.
	asText := content.DecoderFunc(func(in *content.DecodeInput) (any, error) {
		b, err := io.ReadAll(in.Body)
		return string(b), err
	})
	v, errs := validator.NewValidator(d, config.WithFormatAssertions(), config.WithBodyDecoder("application/x-ndjson", asText))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return &conformance{t: t, h: h, v: v, seen: map[string]bool{}}
}

// call sends a request, checks its status, validates the request (when it
// is meant to be valid) and the response, and returns the body.
func (c *conformance) call(method, path, tok string, body any, want int, validRequest bool) []byte {
	t := c.t
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	newReq := func() *http.Request {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(raw)
		}
		req, err := http.NewRequest(method, c.h.ts.URL+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		return req
	}
	res, err := c.h.ts.Client().Do(newReq())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	name := fmt.Sprintf("%s %s -> %d", method, path, res.StatusCode)
	if res.StatusCode != want {
		t.Fatalf("%s, want %d: %s", name, want, got)
	}
	if validRequest {
		if ok, errs := c.v.ValidateHttpRequestSync(newReq()); !ok {
			t.Errorf("%s: the request does not conform:\n%s", name, validationErrors(errs))
		}
	}
	res.Body = io.NopCloser(bytes.NewReader(got))
	if ok, errs := c.v.ValidateHttpResponse(newReq(), res); !ok {
		t.Errorf("%s: the response does not conform:\n%s\nbody: %s", name, validationErrors(errs), got)
	}
	c.seen[fmt.Sprintf("%s %d", method, res.StatusCode)] = true
	return got
}

func (c *conformance) decode(b []byte, v any) {
	c.t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		c.t.Fatalf("decode %s: %v", b, err)
	}
}

// TestOpenAPILogResponsesConform searches and exports the audit log (on a
// real ClickHouse) and validates the exchanges against the document.
func TestOpenAPILogResponsesConform(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node and ClickHouse")
	}
	h := mustStartWithLog(t)
	c := newConformance(t, h)
	adminID, admin := h.principal("payments", domain.RoleKeyAdmin, domain.RoleVerifier)
	_, verifier := h.principal("gateway", domain.RoleVerifier)
	var k api.CreatedKey
	c.decode(c.call("POST", "/v1/keys", admin, jsonObj{"name": "checkout", "comments": "prod"}, 201, true), &k)
	h.verify(k.Token, "", "10.1.2.3", admin)
	h.verify("klk_garbage", "", "10.9.9.9", admin)
	c.call("POST", "/v1/keys/"+k.KeyID+"/revoke", admin, jsonObj{"reason": "leaked"}, 200, true)
	h.syncLog()

	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	c.call("GET", "/v1/logs", h.root, nil, 200, true)
	c.call("GET", "/v1/logs", admin, nil, 200, true)
	var page api.LogPage
	c.decode(c.call("GET", "/v1/logs?limit=1&owner="+adminID, h.root, nil, 200, true), &page)
	if page.NextCursor == "" {
		t.Fatal("expected a next page")
	}
	c.call("GET", "/v1/logs?limit=1&owner="+adminID+"&cursor="+page.NextCursor, h.root, nil, 200, true)
	c.call("GET", "/v1/logs?key_id="+k.KeyID+"&key_id=_&action=created&action=revoked&action=used&outcome=VALID&code=MALFORMED&ip=10.0.0.0/8&from="+from+"&to="+to+"&q=checkout&format=json", h.root, nil, 200, true)
	// Lists may also be comma-separated, which OpenAPI cannot describe
	// next to the repeated form.
	c.call("GET", "/v1/logs?key_id="+k.KeyID+",_&action=created,revoked", h.root, nil, 200, false)
	entry := compileComponent(t, "LogEntry")
	lines := strings.Split(strings.TrimSpace(string(c.call("GET", "/v1/logs?format=ndjson&key_id="+k.KeyID, admin, nil, 200, true))), "\n")
	if len(lines) < 3 {
		t.Fatalf("ndjson export has %d lines", len(lines))
	}
	for _, line := range lines {
		v, err := jsonschema.UnmarshalJSON(strings.NewReader(line))
		if err != nil {
			t.Fatalf("ndjson line %q: %v", line, err)
		}
		if err := entry.Validate(v); err != nil {
			t.Errorf("ndjson line %s: %v", line, err)
		}
	}
	c.call("GET", "/v1/logs?format=csv&limit=10", h.root, nil, 200, true)
	c.call("GET", "/v1/logs?format=xml", h.root, nil, 400, false)
	c.call("GET", "/v1/logs?action=exploded", h.root, nil, 400, false)
	c.call("GET", "/v1/logs?cursor=nope", h.root, nil, 400, true)
	c.call("GET", "/v1/logs", verifier, nil, 403, true)
	c.call("GET", "/v1/logs", "", nil, 401, false)

	// Alerts are searched in the same log.
	alert := domain.AlertRaised{
		Rule: "brute_force", Severity: domain.SeverityHigh, Incident: "brute_force:10.9.9.9", Summary: "42 denials from 10.9.9.9",
		KeyIDs: []string{k.KeyID}, SourceIPs: []string{"10.9.9.9"}, WindowStart: time.Now().Add(-time.Minute), WindowEnd: time.Now(),
		Count: 42, Evidence: []string{uuid.NewString()}, Query: "ip=10.9.9.9&action=denied",
	}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k.KeyID, alert, time.Now(), "keyledger-alerts", nil)
	if err != nil {
		t.Fatal(err)
	}
	env.Seal("")
	if _, err := h.store.PublishAlert(t.Context(), env); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		var p api.AlertPage
		if r := h.do("GET", "/v1/alerts", h.root, nil); r.status == 200 {
			r.json(t, &p)
		}
		if len(p.Alerts) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the alert never reached the log")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.call("GET", "/v1/alerts", h.root, nil, 200, true)
	c.call("GET", "/v1/alerts?rule=brute_force&severity=high&severity=critical&min_severity=medium&key_id="+k.KeyID+"&from="+from+"&to="+to+"&limit=10", h.root, nil, 200, true)
	c.call("GET", "/v1/alerts?severity=dire", h.root, nil, 400, false)
	c.call("GET", "/v1/alerts", admin, nil, 403, true)
}

// chanAlertFeed is the node's one alert subscription: it hands on what
// the test sends.
type chanAlertFeed chan domain.Envelope

func (f chanAlertFeed) TailAlerts(ctx context.Context, fn func(domain.Envelope) error) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case env := <-f:
			if err := fn(env); err != nil {
				return err
			}
		}
	}
}

// TestOpenAPIAlertStreamConforms reads one server-sent alert and checks it
// against the document.
func TestOpenAPIAlertStreamConforms(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	alert := domain.AlertRaised{Rule: "dead_key_presented", Severity: domain.SeverityMedium, Incident: "dead_key_presented:k", Summary: "a revoked key was presented"}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k", alert, time.Now(), "keyledger-alerts", nil)
	if err != nil {
		t.Fatal(err)
	}
	feed := make(chanAlertFeed)
	h := mustStartWith(t, eventstore.Config{NoSync: true}, eventstore.UsageConfig{}, func(c *api.Config) { c.Alerts = feed })
	c := newConformance(t, h)
	c.call("GET", "/v1/alerts/stream?min_severity=dire", h.root, nil, 400, false)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", h.ts.URL+"/v1/alerts/stream?rule=dead_key_presented&min_severity=low", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.root)
	res, err := h.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("stream: %d", res.StatusCode)
	}
	// The stream is open: the alert raised now reaches it.
	feed <- env
	var event bytes.Buffer
	var data string
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		event.WriteString(line + "\n")
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			data = d
		}
		if line == "" && data != "" {
			break
		}
	}
	if data == "" {
		t.Fatalf("no alert event in %q (%v)", event.String(), sc.Err())
	}
	cancel()
	v, err := jsonschema.UnmarshalJSON(strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := compileComponent(t, "AlertView").Validate(v); err != nil {
		t.Errorf("streamed alert %s: %v", data, err)
	}
	res.Body = io.NopCloser(bytes.NewReader(event.Bytes()))
	if ok, errs := c.v.ValidateHttpResponse(req, res); !ok {
		t.Errorf("stream response does not conform:\n%s", validationErrors(errs))
	}
}

// compileComponent compiles one component schema of the document.
func compileComponent(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	root, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OpenAPI()))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource("mem:///openapi.json", root); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("mem:///openapi.json#/components/schemas/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func validationErrors[E any](errs []E) string {
	var b strings.Builder
	for _, e := range errs {
		j, _ := json.Marshal(e)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}
