// A tool call written as the constraint makes the model write one (TOOL_CALL_FORMAT): what tests
// script the model to say, and what a rendered conversation shows for an earlier call.
import { TOOL_CALL_FORMAT } from '../../src/structured/tool-call-format.js';

export function formatToolCall(name: string, argumentsJson: string): string {
  const f = TOOL_CALL_FORMAT;
  return `${f.open}${f.nameOpen}${name}${f.argumentsOpen}${argumentsJson}${f.close}`;
}
