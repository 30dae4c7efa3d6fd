"""Corpora on disk -> lists of audio files -> fixed-length training segments.

Pipeline::

    load_corpus(root, layout)  ->  list[AudioItem]          (probed headers, broken files skipped)
    split_items(items)         ->  (train, valid)           (by file, deterministic)
    SegmentDataset(train, L, sample_rate)[i] -> (L + 1,)    int64 codes (mu-law or linear)
        with speakers= and/or mel=      -> {"codes": (L + 1,), "speaker": (), "mel": (n_mels, F)}
    iter_file_audio(valid, sample_rate)      -> (item, (T,)) whole waveforms, for evaluation
    iter_file_codes(valid, sample_rate)      -> (item, (T,)) their codes
    file_mel(wav, spec, context)             -> (n_mels, frames + 2 * context), for vocoding

One module per stage: :mod:`~wavedil.data.files` (finding and probing files),
:mod:`~wavedil.data.corpus` (layouts, speakers, the split), :mod:`~wavedil.data.segments`
(training segments) and :mod:`~wavedil.data.whole_files` (whole files for evaluation and
vocoding). Every name is re-exported here; import from ``wavedil.data``.

Reports go to :mod:`logging` under the logger ``wavedil.data`` (each module logs to its child
logger), so they land in the training log; user errors raise :class:`CorpusError`.
"""

from .corpus import LAYOUTS, VCTK_MICS, corpus_seconds, load_corpus, speakers_of, split_items, without_mic_suffix
from .files import AUDIO_EXTENSIONS, AudioItem, CorpusError, find_audio_files, probe_audio
from .segments import SegmentDataset
from .whole_files import file_mel, iter_file_audio, iter_file_codes

__all__ = [
    "AUDIO_EXTENSIONS",
    "LAYOUTS",
    "VCTK_MICS",
    "AudioItem",
    "CorpusError",
    "find_audio_files",
    "probe_audio",
    "load_corpus",
    "corpus_seconds",
    "split_items",
    "without_mic_suffix",
    "SegmentDataset",
    "iter_file_audio",
    "iter_file_codes",
    "speakers_of",
    "file_mel",
]
