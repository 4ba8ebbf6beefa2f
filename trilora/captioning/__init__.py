"""`trilora caption`: captions for the images of a folder that have none, from a local model.

models.py finds the kind of model from its folder; blip.py, tagger.py and toy.py are the captioners
(each a callable from a list of RGB images to a list of captions); run.py walks the folder.
"""
