// llama.cpp (node-llama-cpp's prebuilt CPU binary) as the consumer of lorakit's GGUF exports.
//
// Reads one JSON request on stdin and prints one JSON answer on stdout:
//   request: {model, lora?: [{filePath, scale}], contextSize?, threads? (default 1),
//             jobs: [{tokens?: [ids] | text?: string, maxTokens?: n, logits?: bool}]}
//   answer:  {eos, results: [{prompt: [ids], tokens: [ids], text, stoppedAtEog,
//             logits?: [[float x vocab] per prompt position], seconds}], loadSeconds}
// Generation is greedy (temperature 0) and stops at an end-of-generation token or maxTokens.
// `text` prompts are tokenized by llama.cpp itself (special tokens parsed), so a test can check
// the GGUF's own tokenizer; `tokens` prompts bypass it. `logits: true` returns the raw logits
// after every prompt token (one forward over the prompt, no generation).
import {getLlama} from "node-llama-cpp";

const readStdin = async () => {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
};

const denseLogits = (map) => {
    const row = new Array(map.size).fill(null);
    for (const [token, value] of map) row[token] = value;
    return row;
};

const promptLogits = async (sequence, prompt) => {
    const input = prompt.map((token) => [token, {generateNext: {logits: true}}]);
    const outputs = await sequence.controlledEvaluate(input);
    return outputs.map((out) => denseLogits(out.next.logits));
};

const generate = async (sequence, model, prompt, maxTokens) => {
    const tokens = [];
    let stoppedAtEog = false;
    if (maxTokens <= 0) return {tokens, stoppedAtEog};
    for await (const token of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
        if (model.isEogToken(token)) {
            stoppedAtEog = true;
            break;
        }
        tokens.push(token);
        if (tokens.length >= maxTokens) break;
    }
    return {tokens, stoppedAtEog};
};

const main = async () => {
    const req = await readStdin();
    const t0 = performance.now();
    const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
    const model = await llama.loadModel({modelPath: req.model});
    const contextOptions = {contextSize: req.contextSize ?? 1024, sequences: 1};
    // One thread unless asked: llama.cpp's threads spin-wait, and on a loaded machine with few
    // cores a thread count above the free cores makes every token tens of times slower.
    contextOptions.threads = req.threads ?? 1;
    if (req.lora && req.lora.length) contextOptions.lora = {adapters: req.lora};
    const context = await model.createContext(contextOptions);
    const sequence = context.getSequence();
    const loadSeconds = (performance.now() - t0) / 1000;
    const results = [];
    for (const job of req.jobs) {
        await sequence.clearHistory();
        const prompt = job.tokens ?? model.tokenize(job.text, true);
        const start = performance.now();
        const result = {prompt};
        if (job.logits) {
            result.logits = await promptLogits(sequence, prompt);
        } else {
            const out = await generate(sequence, model, prompt, job.maxTokens ?? 32);
            result.tokens = out.tokens;
            result.stoppedAtEog = out.stoppedAtEog;
            result.text = model.detokenize(out.tokens);
        }
        result.seconds = (performance.now() - start) / 1000;
        results.push(result);
    }
    process.stdout.write(JSON.stringify({eos: model.tokens.eos, loadSeconds, results}));
    await context.dispose();
    await model.dispose();
};

main().catch((err) => {
    process.stderr.write(`llama consumer: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
