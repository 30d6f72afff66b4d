"""The shapes world: a procedurally generated dataset for the embedded demo model and ShapesEval.

Submodules: `world` (scenes, held-out split, renderer), `text` (captions, questions, answers),
`builder` (the TFDS dataset `shapes_world`), `vocab` (its `tokenizer.json`).
The four entry points most callers need are re-exported here.
"""

from janus_jax.shapes_demo.world import text
from janus_jax.shapes_demo.world import world

render = world.render
sample_scene = world.sample_scene
caption = text.caption
qa_pairs = text.qa_pairs
