"""Zero-shot visual question answering: questions become programs over the pixel-level model.

As in GRAFT (after ViperGPT), a question is turned into a small program whose
primitives ask the pixel-level model "where is X" for a text X:

* :mod:`graft.vqa.primitives`: one image, one model; concept masks, regions and
  the measures ``exists``, ``count``, ``area``, ``fraction`` (and region filters);
* :mod:`graft.vqa.program`: programs as JSON data, a validator that refuses
  anything outside the schema, and the interpreter (nothing is ever passed to
  ``exec`` or ``eval``);
* :mod:`graft.vqa.parser`: a built-in writer for RSVQA's templated questions;
* :mod:`graft.vqa.chat_writer`: an optional writer that asks an OpenAI-compatible
  chat-completions endpoint for the program;
* :mod:`graft.vqa.rsvqa`: the RSVQA-LR/-HR file layout, answer vocabularies and scoring;
* :mod:`graft.vqa.run`: the ``vqa`` task of ``graft eval`` and the ``graft vqa`` command.

This package is an application on a trained model: it imports
:mod:`graft.evaluation` (model loading, patch features), never the training stack.
"""
