// How a tool call is written in the model's output text. There is one format, Hermes's (the one
// NousResearch's, Qwen's and many other chat templates teach, and vLLM's `hermes` parser reads):
//
//     <tool_call>
//     {"name": "get_weather", "arguments": {"city": "Paris"}}
//     </tool_call>
//
// several calls one after another, separated by a newline. The constraint (tool-call-grammar.ts)
// makes the model write exactly this, and the parser (server/completion/tool-call-parser.ts)
// reads it back; both take the pieces from here so that they cannot disagree.
export const TOOL_CALL_FORMAT = {
  /** What starts a call; free text before a call never contains it. */
  open: '<tool_call>',
  /** Between the opening and the function name. */
  nameOpen: '\n{"name": "',
  /** Between the name and the arguments object. */
  argumentsOpen: '", "arguments": ',
  /** After the arguments object. */
  close: '}\n</tool_call>',
  /** Between two calls. */
  separator: '\n',
} as const;

