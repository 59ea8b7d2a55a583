"""Training text for the default model's tokenizer.

Written for this project (no downloaded corpus): a few paragraphs of plain English,
code and numbers so that byte-level BPE learns useful merges. Non-ASCII text is left to
the byte fallback on purpose, so that multi-byte characters span several tokens and the
incremental detokenizer's hold-back is exercised.
"""

CORPUS = """
The scheduler keeps a queue of waiting requests and a list of running ones. Every
iteration it picks the requests that run, gives each the blocks of key and value cache
it needs, and sends the plan to the executors. When the blocks run out, the newest
request is preempted and computed again later from the tokens the scheduler kept.
A small graphics card holds the weights of a seven billion parameter model and little
else. The cache of every token takes half a megabyte, so only a few requests fit.
Hybrid inference moves the cache of some requests to host memory, where the processor
computes their attention while the graphics card runs the linear layers of the batch.
The question is always the same: does the work on the processor hide behind the work on
the graphics card, or does the graphics card wait? A profile answers it with numbers.
Once upon a time there was a little robot who liked to count. It counted the stars, the
trees, the birds and the clouds. One day it counted the tokens of a story and found that
the story was longer than its memory. So it wrote the first half on a piece of paper and
kept reading. The end of the story was happy, and the robot learned to share its work.
def generate(prompt, max_tokens=16, temperature=0.0):
    tokens = tokenizer.encode(prompt)
    for step in range(max_tokens):
        logits = model(tokens)
        tokens.append(int(logits.argmax()))
    return tokenizer.decode(tokens)
for i in range(10): print(i, i * i, 2 ** i)
0 1 2 3 4 5 6 7 8 9 10 11 12 16 32 64 128 256 512 1024 2048 4096 8192
Hello, world! How are you today? I am fine, thank you. What is the time? It is noon.
Questions and answers: what, why, when, where, who, which, how. Yes, no, maybe.
"""
