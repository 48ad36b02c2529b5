package console_test

import "fmt"

var sprintf = fmt.Sprintf
